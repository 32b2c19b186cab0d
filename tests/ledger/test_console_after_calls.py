"""The README's path: `tollway dev`, a few calls with the openai SDK, then the console link its banner
prints, opened in headless Chromium. Every figure a page shows is checked against what the gateway
told the client (the `x-tollway-cost-usd` headers and the stream's cost comment) and against the
ledger the dev meter filled; a screenshot of each page lands in the test's folder.

Chromium comes from scripts/tools/chromium.sh (`make tools`); without it this test fails saying how
to get it.
"""

from __future__ import annotations

import socket
import sqlite3
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from urllib.parse import quote

import openai
from console_html import Page, body_rows, read_page
from gateway_env import DEMO_KEY
from test_console_browser import chromium, chromium_binary
from test_lifecycle import dev_process, local_config, wait_for

from tollway.dev import DevGateway, DevOptions, free_port, usage_lines
from tollway_meter.console.pages import usd
from tollway_sidecar.contract.money import to_nano

MESSAGES = [{"role": "user", "content": "What does a toll road cost?"}]
COST_COMMENT = ": x-tollway-cost-usd="


def session_headers(session: str, path: str, feature: str) -> dict[str, str]:
    return {
        "x-tollway-session": session,
        "x-tollway-session-path": path,
        "x-tollway-property-feature": feature,
    }


def json_call(sdk: openai.OpenAI, headers: dict[str, str], user: str | None = None) -> Decimal:
    raw = sdk.chat.completions.with_raw_response.create(
        model="gpt-4o-mini",
        messages=MESSAGES,  # type: ignore[arg-type]
        extra_headers=headers,
        **({"user": user} if user else {}),
    )
    return Decimal(raw.headers["x-tollway-cost-usd"])


def stream_call(sdk: openai.OpenAI, headers: dict[str, str]) -> Decimal:
    with sdk.chat.completions.with_streaming_response.create(
        model="gpt-4o-mini",
        messages=MESSAGES,  # type: ignore[arg-type]
        stream=True,
        extra_headers={**headers, "x-tollway-stream-cost": "comment"},  # the cost, before [DONE]
    ) as response:
        lines = list(response.iter_lines())
    (cost,) = [line.removeprefix(COST_COMMENT) for line in lines if line.startswith(COST_COMMENT)]
    return Decimal(cost)


def ledger_ids(path: Path) -> list[str]:
    if not path.exists():
        return []
    try:
        with sqlite3.connect(path) as db:
            return [str(row[0]) for row in db.execute("SELECT id FROM usage_events")]
    except sqlite3.OperationalError:  # not migrated yet
        return []


def dollars(amount: Decimal) -> str:
    return usd(to_nano(amount))


async def test_the_console_the_dev_banner_links_shows_the_calls_just_made(tmp_path: Path) -> None:
    binary = chromium_binary()
    mock_port, port, admin_port, console_port = free_port(), free_port(), free_port(), free_port()
    state = tmp_path / "state"
    options = ("--admin-port", str(admin_port), "--state-dir", str(state))
    options += ("--console-port", str(console_port))
    with dev_process(tmp_path, mock_port, port, *options) as (dev, lines):
        base = f"http://127.0.0.1:{console_port}/console/"
        assert f"  console: {base}\n" in lines, "".join(lines)

        with openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key=DEMO_KEY, max_retries=0) as sdk:
            support = [
                json_call(sdk, session_headers("support-1", "/triage", "support")),
                stream_call(sdk, session_headers("support-1", "/triage/lookup", "support")),
                json_call(sdk, session_headers("support-1", "/triage/lookup", "support")),
            ]
            batch = [json_call(sdk, session_headers("batch-7", "/", "batch"), user="u-9")]
        told = sum(support) + sum(batch)
        ledger = (state / "ledger.db").resolve()
        assert wait_for(lambda: len(ledger_ids(ledger)) == 4, timeout=30), (state / "meter.log").read_text()

        today = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
        since, until = (quote(t.isoformat(), safe="") for t in (today, today + timedelta(days=1)))
        window = f"since={since}&until={until}"
        pages = {
            "overview": f"{base}?{window}",
            "requests": f"{base}requests?{window}",
            "sessions": f"{base}sessions?{window}",
            "session": f"{base}sessions/support-1",
            "users": f"{base}users?{window}",
            "properties": f"{base}properties?name=feature&{window}",
        }
        shown: dict[str, Page] = {}
        for name, url in pages.items():
            shot = tmp_path / f"{name}.png"
            await chromium(binary, url, tmp_path / "profile", f"--screenshot={shot}")
            assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", f"{name}: no screenshot"
            shown[name] = read_page(await chromium(binary, url, tmp_path / "profile", "--dump-dom"))
        assert dev.poll() is None, "".join(lines)

    assert told > 0
    assert f"Spend {dollars(told)} over 4 requests" in shown["overview"].texts["total"]
    assert sorted(shown["requests"].row_ids) == sorted(ledger_ids(ledger))
    sessions = {row[0]: row[1:3] for row in body_rows(shown["sessions"].tables["sessions"])}
    assert sessions == {"support-1": ["3", dollars(sum(support))], "batch-7": ["1", dollars(sum(batch))]}
    assert shown["session"].texts["session-total"] == f"3 calls, {dollars(sum(support))}"
    users = {row[0]: row[1:] for row in body_rows(shown["users"].tables["end-users"])}
    assert users["u-9"] == ["1", dollars(sum(batch))]
    values = {row[0]: row[1:] for row in body_rows(shown["properties"].tables["values"])}
    assert values == {"support": ["3", dollars(sum(support))], "batch": ["1", dollars(sum(batch))]}


def test_dev_serves_the_console_only_when_given_a_port(tmp_path: Path) -> None:
    served = DevGateway(DevOptions(config_dir=tmp_path, state_dir=tmp_path / "s", console_port=8123))
    assert usage_lines(served)[-1] == "  console: http://127.0.0.1:8123/console/"
    argv = served._meter_argv(["tollway"])
    assert argv[argv.index("--api-port") + 1] == "8123"
    assert argv[argv.index("--api-host") + 1] == "127.0.0.1"  # open to anyone who can connect
    assert argv[argv.index("--auth") + 1] == "none"
    assert argv[argv.index("--budgets-from") + 1] == str(served.config_file)
    assert "--console" in argv
    remote = DevGateway(DevOptions(config_dir=tmp_path, config_secret="ns/s", console_port=8123))
    assert "--budgets-from" not in remote._meter_argv(["tollway"])
    unserved = DevGateway(DevOptions(config_dir=tmp_path, state_dir=tmp_path / "u"))
    argv = unserved._meter_argv(["tollway"])
    assert argv[argv.index("--api-port") + 1] == "0" and "--console" not in argv
    assert "tollway console --db" in usage_lines(unserved)[-1]


def test_a_console_port_in_use_stops_dev_with_the_meters_error(tmp_path: Path) -> None:
    """The console's port taken: the meter cannot listen, and `tollway dev` says so and exits."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        mock_port = free_port()
        argv = [sys.executable, "-m", "tollway", "dev", "--config", str(local_config(tmp_path, mock_port))]
        argv += ["--port", str(free_port()), "--admin-port", str(free_port()), "--mock-port", str(mock_port)]
        argv += ["--state-dir", str(tmp_path / "state"), "--console-port", str(taken.getsockname()[1])]
        done = subprocess.run(argv, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode != 0
    assert "meter" in done.stdout + done.stderr, done.stdout + done.stderr
