"""`tollway dev` as a user runs it: live reload of the folder, a bad config keeps the last good one,
and SIGTERM stops every process it started."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from gateway_env import DEMO_KEY, ROOT
from httpcall import bearer, call

from tollway.dev import DevGateway, DevOptions, free_port

NEW_ROUTE = """
apiVersion: tollway.dev/v1alpha1
kind: RouteRule
metadata:
  name: added-later
spec:
  model: added-later
  backends:
    - name: mock
      provider: openai-compatible
      model: gpt-4o-mini
      baseURL: http://127.0.0.1:{port}/v1
"""


def chat(origin: str, model: str) -> int:
    body = json.dumps({"model": model, "messages": [{"role": "user", "content": "hi"}]}).encode()
    return call(origin, "POST", "/v1/chat/completions", body, bearer(DEMO_KEY)).status


def wait_for(predicate: object, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():  # type: ignore[operator]
            return True
        time.sleep(0.1)
    return False


def local_config(tmp: Path, mock_port: int) -> Path:
    folder = tmp / "config"
    shutil.copytree(ROOT / "examples" / "local", folder)
    for path in folder.glob("*.yaml"):
        path.write_text(path.read_text().replace("127.0.0.1:9000", f"127.0.0.1:{mock_port}"))
    return folder


@contextlib.contextmanager
def dev_process(
    tmp: Path, mock_port: int, port: int, *options: str
) -> Iterator[tuple[subprocess.Popen[str], list[str]]]:
    """`tollway dev` as a user runs it, on the examples, once its banner is out: the process and
    every line it has printed so far (read on a thread); stopped with SIGTERM afterwards."""
    argv = [
        *(sys.executable, "-m", "tollway", "dev", "--config", str(local_config(tmp, mock_port))),
        *("--port", str(port), "--mock-port", str(mock_port), *options),
    ]
    if "--console-port" not in options:  # not the fixed default, which an earlier run may still hold
        argv += ["--console-port", str(free_port())]
    dev = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines: list[str] = []
    try:
        assert dev.stdout is not None
        reader = threading.Thread(target=lambda: lines.extend(dev.stdout or ()), daemon=True)
        reader.start()
        assert wait_for(lambda: any(line.startswith("Press Ctrl-C") for line in lines), 60), lines
        yield dev, lines
    finally:
        if dev.poll() is None:
            dev.send_signal(signal.SIGTERM)
            dev.wait(timeout=20)
        if dev.stdout:
            dev.stdout.close()


@pytest.fixture
def own_gateway(tmp_path: Path) -> Iterator[DevGateway]:
    """A gateway of its own, since these tests change its configuration."""
    mock_port = free_port()
    options = DevOptions(
        config_dir=local_config(tmp_path, mock_port),
        port=free_port(),
        admin_port=free_port(),
        mock_port=mock_port,
        state_dir=tmp_path / "state",
        quiet=True,
    )
    gateway = DevGateway(options)
    try:
        gateway.start()
        yield gateway
    finally:
        gateway.stop()


def test_a_route_added_to_the_folder_is_served_without_a_restart(own_gateway: DevGateway) -> None:
    origin = own_gateway.base_url.removesuffix("/v1")
    assert chat(origin, "added-later") == 404
    (own_gateway.options.config_dir / "later.yaml").write_text(
        NEW_ROUTE.format(port=own_gateway.options.mock_port)
    )
    own_gateway.compile()  # what the `tollway dev` loop does every half second
    assert wait_for(lambda: chat(origin, "added-later") == 200), "the new route was not served within 10 s"
    assert chat(origin, "gpt-4o-mini") == 200


def test_a_config_that_fails_to_load_leaves_the_previous_one_serving(own_gateway: DevGateway) -> None:
    origin = own_gateway.base_url.removesuffix("/v1")
    good = own_gateway.config_file.read_text()
    for broken in (
        "{not json",
        json.dumps({"keys": "nope"}),
        good.replace('"checksum": "', '"checksum": "0'),
    ):
        own_gateway.config_file.write_text(broken)
        time.sleep(1.5)  # the sidecar polls the file every second
        assert chat(origin, "gpt-4o-mini") == 200
    log = (own_gateway.state_dir / "sidecar.log").read_text()
    assert "keeping the previous config" in log
    assert "checksum" in log


@pytest.mark.parametrize(
    ("file", "good", "bad", "named"),
    [
        ("budgets.yaml", 'limit: "10.00"', 'limit: "-5"', "Budget default/demo-monthly: spec.limit"),
        (
            "routes.yaml",
            "  backends:\n    - name: mock\n      provider: openai-compatible\n      model: gpt-4o-mini\n",
            # ... and the rest of the backend commented out
            "  backends: []\n#    - name: mock\n#      provider: openai-compatible\n"
            "#      model: gpt-4o-mini\n#",
            "RouteRule default/gpt-4o-mini",
        ),
        ("keys.yaml", "kind: VirtualKey", "kind: [VirtualKey", "keys.yaml: invalid YAML"),
    ],
    ids=["negative-budget", "route-without-backends", "invalid-yaml"],
)
def test_a_bad_edit_keeps_the_last_good_version_serving(
    own_gateway: DevGateway, capsys: pytest.CaptureFixture[str], file: str, good: str, bad: str, named: str
) -> None:
    origin = own_gateway.base_url.removesuffix("/v1")
    path = own_gateway.options.config_dir / file
    text = path.read_text()
    assert good in text
    before = own_gateway.config_file.read_text()
    capsys.readouterr()

    path.write_text(text.replace(good, bad, 1))
    result = own_gateway.compile()

    assert result.errors, "the edit should be reported"
    assert own_gateway.config_file.read_text() == before  # the served config did not change
    assert chat(origin, "gpt-4o-mini") == 200
    said = capsys.readouterr().err
    assert named in said, said
    assert "still served until it is fixed" in said or "serving the resources last read from it" in said, said

    path.write_text(text)  # fixed: the notes go, the config is the same as before
    assert own_gateway.compile().errors == ()
    assert own_gateway.config_file.read_text() == before


def _processes_of(state_dir: Path) -> list[int]:
    """Processes started for this state dir: Envoy names it in argv, the others in their environment."""
    found = []
    marker = str(state_dir).encode()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            blob = (entry / "cmdline").read_bytes() + (entry / "environ").read_bytes()
        except OSError:
            continue
        if marker in blob:
            found.append(int(entry.name))
    return found


def test_sigterm_stops_every_process_cleanly(tmp_path: Path) -> None:
    mock_port, state = free_port(), tmp_path / "state"
    argv = [
        sys.executable,
        "-m",
        "tollway",
        "dev",
        "--config",
        str(local_config(tmp_path, mock_port)),
        "--port",
        str(free_port()),
        "--admin-port",
        str(free_port()),
        "--mock-port",
        str(mock_port),
        "--state-dir",
        str(state),
        "--console-port",
        str(free_port()),
    ]
    dev = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        assert dev.stdout is not None
        lines = []
        for line in dev.stdout:
            lines.append(line)
            if line.startswith("Press Ctrl-C"):
                break
        banner = "".join(lines)
        assert "Tollway gateway ready at http://127.0.0.1:" in banner, banner
        assert f"key demo: {DEMO_KEY}" in banner
        children = [pid for pid in _processes_of(state) if pid != dev.pid]
        assert len(children) == 4, children  # mock provider, sidecar, meter, Envoy
        dev.send_signal(signal.SIGTERM)
        assert dev.wait(timeout=20) == 0
        assert "Tollway stopped." in dev.stdout.read()
        assert wait_for(lambda: not _processes_of(state), timeout=5), _processes_of(state)
    finally:
        if dev.poll() is None:
            dev.kill()
            dev.wait()
        if dev.stdout:
            dev.stdout.close()


def _named(pids: list[int], word: bytes) -> list[int]:
    """The processes with `word` as one of their arguments (`tollway sidecar`, `envoy -c envoy.json`)."""
    found = []
    for pid in pids:
        with contextlib.suppress(OSError):
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            if any(arg == word or arg.endswith(b"/" + word) for arg in argv):
                found.append(pid)
    return found


def test_a_killed_sidecar_is_restarted_behind_the_same_envoy(tmp_path: Path) -> None:
    mock_port, port, state = free_port(), free_port(), tmp_path / "state"
    options = ("--admin-port", str(free_port()), "--state-dir", str(state))
    with dev_process(tmp_path, mock_port, port, *options) as (dev, lines):
        origin = f"http://127.0.0.1:{port}"
        assert chat(origin, "gpt-4o-mini") == 200
        children = [pid for pid in _processes_of(state) if pid != dev.pid]
        (sidecar,) = _named(children, b"sidecar")
        (envoy,) = _named(children, b"envoy.json")

        os.kill(sidecar, signal.SIGKILL)
        killed = time.monotonic()
        assert wait_for(lambda: chat(origin, "gpt-4o-mini") == 200, timeout=10), (
            "no answer 10 s after the kill"
        )
        back_after = time.monotonic() - killed

        assert dev.poll() is None, "".join(lines)
        assert _named([envoy], b"envoy.json") == [envoy]  # the same Envoy, never restarted
        (again,) = _named([pid for pid in _processes_of(state) if pid != dev.pid], b"sidecar")
        assert again != sidecar
        said = "".join(lines)
        assert "tollway dev: sidecar exited with code -9; restarting it now" in said, said
        assert f"tollway dev: sidecar restarted (pid {again}, restart 1 in a row)" in said, said
        print(f"calls answered again {back_after:.2f} s after the sidecar was killed")


def test_compile_prints_the_config_or_each_error(tmp_path: Path) -> None:
    tollway = [sys.executable, "-m", "tollway", "compile"]
    ok = subprocess.run(
        [*tollway, str(ROOT / "examples" / "local")], capture_output=True, text=True, check=False
    )
    assert ok.returncode == 0, ok.stderr
    config = json.loads(ok.stdout)
    assert {route["model"] for route in config["routes"]} >= {"gpt-4o-mini", "gpt-4o"}
    assert DEMO_KEY not in ok.stdout
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "route.yaml").write_text(
        "apiVersion: tollway.dev/v1alpha1\nkind: RouteRule\nmetadata: {name: broken}\n"
        "spec:\n  model: m\n  backends:\n    - {name: b, provider: openai-compatible, model: m, baseURL: 'ftp://x'}\n"
    )
    failed = subprocess.run([*tollway, str(bad)], capture_output=True, text=True, check=False)
    assert failed.returncode == 1
    assert "route.yaml" in failed.stderr
    assert "RouteRule default/broken" in failed.stderr
    assert "spec.backends[0].baseURL" in failed.stderr
    assert (
        "RouteRule default/broken: left out of this config (`tollway dev` and the operator keep serving"
        in (failed.stderr)
    )
