"""Invoices: a period's spend in lines by roll-up dimensions, which sum exactly to its total.

Lines and total are read in one transaction and compared as integer nano-USD before anything is
written out; the formatted amounts are Decimal strings with 9 fraction digits, never floats.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Sequence
from dataclasses import dataclass

from tollway_meter.ledger import Ledger
from tollway_meter.queries import ROLLUP_COLUMNS
from tollway_meter.rows import parse_period
from tollway_sidecar.contract.usage_event import nanos_to_usd


@dataclass(frozen=True)
class InvoiceLine:
    keys: dict[str, str]
    adjustment: bool
    requests: int
    billable_requests: int
    cost_nanos: int


@dataclass(frozen=True)
class Invoice:
    period: str
    closed: bool
    by: tuple[str, ...]
    lines: tuple[InvoiceLine, ...]
    total_nanos: int


def build_invoice(ledger: Ledger, period: str, by: Sequence[str]) -> Invoice:
    parse_period(period)
    for name in by:
        if name not in ROLLUP_COLUMNS:
            raise ValueError(f"by: an invoice groups by {', '.join(ROLLUP_COLUMNS)}; got {name!r}")
    columns = [ROLLUP_COLUMNS[name] for name in by]
    group = ", ".join([*columns, "adjustment"])
    sql = (
        f"SELECT {group}, sum(requests), sum(billable_requests), sum(cost_nanos) FROM usage_hourly "
        f"WHERE period = %s GROUP BY {group} ORDER BY {group}"
    )
    with ledger.transaction(readonly=True) as cur:
        cur.execute(ledger.sql(sql), (period,))
        rows = cur.fetchall()
        cur.execute(
            ledger.sql("SELECT coalesce(sum(cost_nanos), 0) FROM usage_hourly WHERE period = %s"), (period,)
        )
        total_row = cur.fetchone()
        cur.execute(ledger.sql("SELECT count(*) FROM periods WHERE period = %s"), (period,))
        closed_row = cur.fetchone()
    lines = tuple(
        InvoiceLine(
            keys={name: str(row[i]) for i, name in enumerate(by)},
            adjustment=bool(row[len(by)]),
            requests=int(row[len(by) + 1]),
            billable_requests=int(row[len(by) + 2]),
            cost_nanos=int(row[len(by) + 3]),
        )
        for row in rows
    )
    total = int(total_row[0]) if total_row else 0
    if sum(line.cost_nanos for line in lines) != total:
        raise RuntimeError(f"invoice {period}: lines do not sum to the total (the ledger changed mid-read)")
    return Invoice(period, bool(closed_row and closed_row[0]), tuple(by), lines, total)


def invoice_csv(invoice: Invoice) -> str:
    """One row per line, then a `total` row; `kind` tells them apart (a team may be named "total")."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(
        ["kind", "period", *invoice.by, "adjustment", "requests", "billable_requests", "cost_usd"]
    )
    for line in invoice.lines:
        writer.writerow(
            [
                "line",
                invoice.period,
                *(line.keys[name] for name in invoice.by),
                "true" if line.adjustment else "false",
                line.requests,
                line.billable_requests,
                nanos_to_usd(line.cost_nanos),
            ]
        )
    requests = sum(line.requests for line in invoice.lines)
    billable = sum(line.billable_requests for line in invoice.lines)
    blanks = [""] * len(invoice.by)
    writer.writerow(
        ["total", invoice.period, *blanks, "", requests, billable, nanos_to_usd(invoice.total_nanos)]
    )
    return out.getvalue()


def invoice_json(invoice: Invoice) -> str:
    body = {
        "period": invoice.period,
        "closed": invoice.closed,
        "by": list(invoice.by),
        "lines": [
            {
                **line.keys,
                "adjustment": line.adjustment,
                "requests": line.requests,
                "billable_requests": line.billable_requests,
                "cost_usd": str(nanos_to_usd(line.cost_nanos)),
            }
            for line in invoice.lines
        ],
        "total_usd": str(nanos_to_usd(invoice.total_nanos)),
    }
    return json.dumps(body, indent=2)
