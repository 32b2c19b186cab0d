"""A real browser: headless Chromium loads every console page from a running server, the numbers
it shows are the ledger's, and a screenshot of each page lands in the test's folder.

Chromium comes from scripts/tools/chromium.sh (`make tools` installs Debian's package); without it
this test fails, saying how to get it.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
from datetime import timedelta
from pathlib import Path

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from console_html import body_rows, read_page
from ledger_events import NOV
from test_console import SINCE, UNTIL, WINDOW, varied

from tollway_meter.console import mount
from tollway_meter.console.pages import usd
from tollway_meter.ledger import Ledger
from tollway_meter.queries import usage

ROOT = Path(__file__).resolve().parents[2]


def chromium_binary() -> str:
    """chromium from scripts/tools/chromium.sh (`make tools` installs it; this never installs)."""
    found = subprocess.run(
        ["bash", str(ROOT / "scripts" / "tools" / "chromium.sh")],
        env={**os.environ, "TOLLWAY_TOOLS_NO_BUILD": "1"},
        capture_output=True,
        text=True,
        check=False,
    )
    if found.returncode != 0:
        pytest.fail(f"chromium is needed for the console's browser test:\n{found.stderr}", pytrace=False)
    return found.stdout.strip().splitlines()[-1]


async def chromium(binary: str, url: str, profile: Path, *args: str) -> str:
    """Run headless Chromium on `url` (asynchronously: the server answers on this event loop)."""
    process = await asyncio.create_subprocess_exec(
        binary,
        "--headless",
        "--no-sandbox",  # the tests run as root in CI
        "--disable-gpu",
        "--hide-scrollbars",
        "--window-size=1280,1100",
        f"--user-data-dir={profile}",
        *args,
        url,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(), timeout=120)
    assert process.returncode == 0, err.decode()[-2000:]
    return out.decode()


async def test_chromium_loads_every_page_and_shows_the_ledgers_numbers(
    ledger: Ledger, tmp_path: Path
) -> None:
    binary = chromium_binary()
    events = varied()
    ledger.ingest(events)
    app = web.Application()
    mount(app, ledger, "http://127.0.0.1:16686", clock=lambda: NOV + timedelta(days=1))
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    base = f"http://127.0.0.1:{server.port}/console"
    try:
        first = str(events[-1].id)
        pages = {
            "overview": f"{base}/?{WINDOW}",
            "requests": f"{base}/requests?{WINDOW}&limit=500",  # every row on one page
            "request": f"{base}/requests/{first}",
            "sessions": f"{base}/sessions?{WINDOW}",
            "session": f"{base}/sessions/chat-9",
            "users": f"{base}/users?{WINDOW}",
            "properties": f"{base}/properties?name=feature&{WINDOW}",
        }
        doms = {}
        for name, url in pages.items():
            shot = tmp_path / f"{name}.png"
            await chromium(binary, url, tmp_path / "profile", f"--screenshot={shot}")
            assert shot.stat().st_size > 5000, f"{name}: no screenshot"
            assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
            doms[name] = read_page(await chromium(binary, url, tmp_path / "profile", "--dump-dom"))
        # What the browser rendered is what the ledger holds.
        [total] = usage(ledger, [], SINCE, UNTIL)
        assert (
            f"Spend {usd(total.cost_nanos)} over {total.requests} requests" in doms["overview"].texts["total"]
        )
        by_team = [
            [r.keys["team"] or "-", str(r.requests), usd(r.cost_nanos)]
            for r in usage(ledger, ["team"], SINCE, UNTIL)
        ]
        assert body_rows(doms["overview"].tables["by-team"]) == by_team[:10]
        assert total.cache_hits > 0
        assert (
            doms["overview"].texts["cache"]
            == f"Response cache: {total.cache_hits} hits saved {usd(total.saved_nanos)}."
        )
        sessions = {e.data.session_id for e in events if e.data.session_id}
        assert sorted(doms["sessions"].row_ids) == sorted(sessions)
        assert sorted(doms["requests"].row_ids) == sorted(str(e.id) for e in events)
        assert doms["session"].texts["session-total"] == "4 calls, $0.100000000"
        assert {row[0] for row in body_rows(doms["users"].tables["end-users"])} >= {"u-1", "u-2"}
        assert doms["request"].texts["event"].startswith("{")
    finally:
        await server.close()
