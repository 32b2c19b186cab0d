"""Money as both sides store and show it: integer nano-USD in counters, plain decimal strings in status."""

from __future__ import annotations

from decimal import ROUND_CEILING, Decimal
from typing import Final

__all__ = ["NANO_PER_USD", "format_usd", "from_nano", "to_nano"]

NANO_PER_USD: Final = 1_000_000_000


def to_nano(usd: Decimal) -> int:
    """USD → integer nano-USD, rounded up only when not already whole."""
    return int((usd * NANO_PER_USD).to_integral_value(rounding=ROUND_CEILING))


def from_nano(nano: int) -> Decimal:
    return Decimal(nano).scaleb(-9)


def format_usd(amount: Decimal) -> str:
    """A plain decimal string: no exponent, no trailing zeros (`Decimal("0.000135")` → `"0.000135"`,
    `Decimal("0E-9")` → `"0"`, `Decimal("1.50")` → `"1.5"`)."""
    if not amount.is_finite():
        raise ValueError(f"not a finite amount: {amount}")
    text = format(amount, "f")
    if "." in text:
        text = text.rstrip("0").rstrip(".")
    if text in ("-0", ""):
        text = "0"
    return text
