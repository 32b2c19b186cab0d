"""`tollway report` against a dev-style SQLite ledger: the table a user reads in the terminal."""

from __future__ import annotations

import csv
import io
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

from click.testing import CliRunner
from ledger_events import make_event

from tollway.cli import main
from tollway_meter.ledger import Ledger
from tollway_meter.report_period import containing
from tollway_sidecar.contract.usage_event import nanos_to_usd


def _dev_ledger(path: Path) -> tuple[str, int]:
    """A ledger with last week's calls (and one this week, which the report leaves out)."""
    last = containing("week", datetime.now(UTC)).previous()
    ledger = Ledger.open(f"sqlite:///{path}")
    ledger.migrate()
    events = [
        make_event(at=last.since + timedelta(days=1, hours=i), cost=f"0.00{i}000007", key_name=f"key-{i % 3}")
        for i in range(1, 8)
    ]
    ledger.ingest([*events, make_event(at=last.until + timedelta(minutes=1), cost="1")])
    ledger.close()
    return last.label, sum(e.data.cost_nanos for e in events)


def test_report_prints_last_weeks_table(tmp_path: Path) -> None:
    label, nanos = _dev_ledger(tmp_path / "ledger.db")
    result = CliRunner().invoke(main, ["report", "--db", f"sqlite:///{tmp_path / 'ledger.db'}"])
    assert result.exit_code == 0, result.output
    total = format(nanos_to_usd(nanos), "f")
    assert f"Cost report {label}" in result.output
    assert f"Total {total} USD over 7 requests" in result.output
    keys = result.output.split("Top keys\n")[1].split("\n\n")[0].splitlines()
    assert keys[0].split() == ["key", "requests", "cost_usd"]
    assert [row.split()[0] for row in keys[2:]] == ["key-1", "key-0", "key-2"]  # by spend


def test_report_from_the_dev_ledger_env_as_csv(tmp_path: Path) -> None:
    _label, nanos = _dev_ledger(tmp_path / "ledger.db")
    result = CliRunner().invoke(
        main,
        ["report", "--format", "csv", "--key", "key-1"],
        env={"TOLLWAY_METER_DB": f"sqlite:///{tmp_path / 'ledger.db'}"},
    )
    assert result.exit_code == 0, result.output
    rows = list(csv.DictReader(io.StringIO(result.output)))
    assert {r["key_name"] for r in rows if r["kind"] == "line"} == {"key-1"}
    assert Decimal(rows[-1]["cost_usd"]) < nanos_to_usd(nanos)


def test_a_bad_period_is_a_usage_error(tmp_path: Path) -> None:
    result = CliRunner().invoke(
        main, ["report", "--period", "2026-W60", "--db", f"sqlite:///{tmp_path / 'l.db'}"]
    )
    assert result.exit_code == 2
    assert "2026 has no ISO week 60" in result.output
