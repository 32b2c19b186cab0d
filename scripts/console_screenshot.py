"""docs/console-overview.png from real calls: `tollway dev` on examples/local (with the response
cache on for gpt-4o-mini), a small day of traffic with the openai SDK (sessions, end users,
properties, streams, cache hits), then headless Chromium on the console's overview.

    .venv/bin/python scripts/console_screenshot.py [--out docs/console-overview.png]

Needs Chromium (scripts/tools/chromium.sh, which `make tools` runs).
"""

from __future__ import annotations

import argparse
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import quote

import openai

from tollway.dev import DevGateway, DevOptions, free_port

ROOT = Path(__file__).resolve().parents[1]
DEMO_KEY = "tw-demo-0123456789abcdef0123456789abcdef"
CACHE = """  cache:
    mode: Exact
    ttl: 5m
"""
QUESTIONS = [
    "Where is my order?",
    "How do I reset my password?",
    "What does the premium plan include?",
    "Can I get a refund?",
]


def chromium() -> str:
    found = subprocess.run(
        ["bash", str(ROOT / "scripts" / "tools" / "chromium.sh")], capture_output=True, text=True, check=False
    )
    if found.returncode != 0:
        sys.exit(f"chromium is needed for the screenshot:\n{found.stderr}")
    return found.stdout.strip().splitlines()[-1]


def config(folder: Path, mock_port: int) -> Path:
    shutil.copytree(ROOT / "examples" / "local", folder)
    routes = folder / "routes.yaml"
    text = routes.read_text().replace("127.0.0.1:9000", f"127.0.0.1:{mock_port}")
    # The first route is gpt-4o-mini's: its cache on, so repeated questions are hits.
    text = text.replace("  timeout: 30s ", CACHE + "  timeout: 30s ", 1)
    routes.write_text(text)
    for path in folder.glob("*.yaml"):
        path.write_text(path.read_text().replace("127.0.0.1:9000", f"127.0.0.1:{mock_port}"))
    return folder


def traffic(sdk: openai.OpenAI) -> int:
    calls = 0
    for n, (feature, user) in enumerate([("support", "u-ada"), ("support", "u-lin"), ("search", "u-ada")]):
        session = f"{feature}-{n + 1}"
        for turn, question in enumerate(QUESTIONS * 2):
            headers = {
                "x-tollway-session": session,
                "x-tollway-session-path": f"/chat/turn-{turn % 4}",
                "x-tollway-property-feature": feature,
                "x-tollway-user": user,
            }
            model = "gpt-4o" if turn % 3 == 2 else "gpt-4o-mini"
            if turn % 4 == 1:
                with sdk.chat.completions.create(
                    model=model,
                    messages=[{"role": "user", "content": question}],
                    stream=True,
                    extra_headers=headers,
                ) as stream:
                    for _ in stream:
                        pass
            else:
                sdk.chat.completions.create(
                    model=model, messages=[{"role": "user", "content": question}], extra_headers=headers
                )
            calls += 1
    return calls


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "console-overview.png")
    args = parser.parse_args()
    binary = chromium()
    base = Path(tempfile.mkdtemp(prefix="tollway-shot-"))
    mock_port = free_port()
    options = DevOptions(
        config_dir=config(base / "config", mock_port),
        port=free_port(),
        admin_port=free_port(),
        mock_port=mock_port,
        state_dir=base / "state",
        console_port=free_port(),
        quiet=True,
    )
    gateway = DevGateway(options)
    gateway.start()
    try:
        with openai.OpenAI(base_url=gateway.base_url, api_key=DEMO_KEY, max_retries=0) as sdk:
            calls = traffic(sdk)
        ledger = base / "state" / "ledger.db"
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            with sqlite3.connect(ledger) as db:
                if db.execute("SELECT count(*) FROM usage_events").fetchone()[0] == calls:
                    break
            time.sleep(0.2)
        today = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
        since, until = (quote(t.isoformat(), safe="") for t in (today, today + timedelta(days=1)))
        url = f"{gateway.console_url}?since={since}&until={until}"
        argv = [binary, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars"]
        argv += [f"--user-data-dir={base / 'profile'}", "--window-size=1280,1500", f"--screenshot={args.out}"]
        subprocess.run(
            [*argv, url],
            check=True,
            capture_output=True,
            timeout=120,
        )
        print(f"{args.out}: the overview after {calls} calls")
    finally:
        gateway.stop()
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
