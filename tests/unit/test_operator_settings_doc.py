"""docs/operator.md's settings table lists every operator setting, each with its real default."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
from pydantic import AliasChoices

from tollway_operator.settings import OperatorSettings

DOC = Path(__file__).resolve().parents[2] / "docs" / "operator.md"
PREFIX = "TOLLWAY_OPERATOR_"


def table() -> dict[str, str]:
    """Variable → documented default, from the rows under "## Settings". A row may name several
    variables sharing a stem, `A_B_X` / `_Y` (that is A_B_X and A_B_Y), with as many defaults."""
    section = DOC.read_text().split("\n## Settings\n", 1)[1].split("\n## ", 1)[0]
    rows: dict[str, str] = {}
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) < 2 or not cells[0].startswith(f"`{PREFIX}"):
            continue
        names = re.findall(r"`([A-Z_]+)`", cells[0].split("(or")[0])
        defaults = [d.strip().strip("`") for d in cells[1].split(" / ")]
        stem = names[0].rsplit("_", 1)[0]
        for i, name in enumerate(names):
            full = name if name.startswith(PREFIX) else stem + name
            rows[full] = defaults[i] if len(defaults) == len(names) else cells[1]
    return rows


def documented(value: Any) -> str:
    """How the table writes a default."""
    if value is None or value == []:
        return "(none)"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def test_every_setting_is_in_the_table_with_its_default() -> None:
    rows = table()
    assert len(rows) >= 10, "the settings table was not found or not parsed"
    for name, field in OperatorSettings.model_fields.items():
        variable = f"{PREFIX}{name.upper()}"
        if isinstance(field.validation_alias, AliasChoices):
            variable = str(field.validation_alias.choices[0])
        assert variable in rows, f"docs/operator.md does not list {variable}"
        want = documented(field.default)
        got = rows[variable]
        if name == "namespaces":  # an empty list means every namespace
            want = "(all)"
        assert got == want, f"docs/operator.md: {variable} defaults to {want}, the table says {got}"


def test_the_table_lists_no_setting_that_does_not_exist() -> None:
    known = {f"{PREFIX}{name.upper()}" for name in OperatorSettings.model_fields}
    assert set(table()) - known == set()


def test_an_empty_port_variable_turns_that_server_off(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TOLLWAY_OPERATOR_METRICS_PORT", "")
    monkeypatch.setenv("TOLLWAY_OPERATOR_HEALTH_PORT", " ")
    settings = OperatorSettings()
    assert settings.metrics_port is None and settings.health_port is None
    monkeypatch.setenv("TOLLWAY_OPERATOR_METRICS_PORT", "9182")
    assert OperatorSettings().metrics_port == 9182
