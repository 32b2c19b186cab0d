"""Propagation: from `kubectl apply` to the gateway enforcing it. Target: p95 ≤ 2 s.

    python -m bench.propagation [--rounds 40] [--json out.json]

Starts the operator's end-to-end stack (tests/operator_e2e/stack.py: a real kube-apiserver + etcd,
the CRDs and deploy/rbac/, Redis, `tollway operator` under its ServiceAccount token, Envoy + the
sidecar watching the GatewayConfig Secret under the gateway's token, the mock provider), then flips
a VirtualKey between `disabled: true` and `false` with `kubectl apply`, `--rounds` times. Each round
is timed from the moment `kubectl apply` is started to the first answer of the gateway that shows
the change (401 after disabling, 200 after enabling), probing `GET /v1/models` with the key every
10 ms. The clock therefore includes kubectl's own start-up, the API server, the operator's watch,
compile and publish, the sidecar's watch and config swap. Everything runs on this machine.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "operator_e2e"))

from stack import (  # noqa: E402
    Stack,
    in_namespace,
    key_secret,
    mock_route,
    resource,
    running_stack,
    start_control_plane,
)

KEY = "tw-bench-0123456789abcdef0123456789abc"
NS = "bench"


def status_of(stack: Stack, key: str) -> int:
    request = urllib.request.Request(
        f"{stack.gateway.base_url}/models", headers={"Authorization": f"Bearer {key}"}
    )
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)


def virtualkey(disabled: bool) -> str:
    spec = {"secretRef": {"name": "bench-key", "key": "key"}, "disabled": disabled}
    return json.dumps(in_namespace(NS, resource("VirtualKey", "bench", spec))[0])


def one_round(stack: Stack, disabled: bool, timeout: float = 30.0) -> dict[str, float]:
    want = 401 if disabled else 200
    cmd = [str(stack.cp.kubectl_path), "--kubeconfig", str(stack.cp.kubeconfig), "apply", "-f", "-"]
    started = time.perf_counter()
    subprocess.run(cmd, input=virtualkey(disabled), text=True, check=True, capture_output=True)
    applied = time.perf_counter()
    while time.perf_counter() - started < timeout:
        if status_of(stack, KEY) == want:
            enforced = time.perf_counter()
            return {
                "total": enforced - started,
                "after_apply": enforced - applied,
                "kubectl": applied - started,
            }
        time.sleep(0.01)
    raise TimeoutError(f"the gateway did not answer {want} within {timeout} s")


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    rank = max(0, min(len(ordered) - 1, round(p / 100 * len(ordered) + 0.5) - 1))
    return ordered[rank]


def summarize(samples: list[dict[str, float]]) -> dict[str, Any]:
    out: dict[str, Any] = {"rounds": len(samples)}
    for field in ("total", "after_apply", "kubectl"):
        values = [s[field] for s in samples]
        out[field] = {
            "p50": statistics.median(values),
            "p95": percentile(values, 95),
            "max": max(values),
            "mean": statistics.fmean(values),
        }
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.propagation", description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=40)
    parser.add_argument("--json", type=Path, default=None, help="also write the samples and summary here")
    args = parser.parse_args(argv)

    workdir = Path(tempfile.mkdtemp(prefix="tollway-propagation-"))
    cp, audit_log = start_control_plane(workdir)
    try:
        with running_stack(cp, audit_log, workdir / "stack") as stack:
            stack.namespace(NS)
            stack.apply(
                in_namespace(
                    NS,
                    key_secret("bench-key", KEY),
                    mock_route("chat", "bench-chat", stack.gateway.options.mock_port),
                )
            )
            stack.cp.kubectl("apply", "-f", "-", input=virtualkey(False))
            deadline = time.monotonic() + 30
            while status_of(stack, KEY) != 200:
                if time.monotonic() > deadline:
                    raise TimeoutError("the bench key never worked")
                time.sleep(0.05)
            samples = []
            for i in range(args.rounds):
                samples.append(one_round(stack, disabled=i % 2 == 0))
                time.sleep(0.2)  # let the status writes of the last round settle
    finally:
        cp.stop()

    summary = summarize(samples)
    print(f"propagation, kubectl apply → enforced by the gateway ({summary['rounds']} rounds)")
    for field, label in (
        ("total", "from kubectl start"),
        ("after_apply", "from kubectl returning"),
        ("kubectl", "kubectl apply itself"),
    ):
        s = summary[field]
        print(
            f"  {label:24} p50 {s['p50'] * 1000:7.0f} ms   p95 {s['p95'] * 1000:7.0f} ms   "
            f"max {s['max'] * 1000:7.0f} ms"
        )
    ok = summary["total"]["p95"] <= 2.0
    print(f"  target p95 ≤ 2 s: {'met' if ok else 'MISSED'}")
    if args.json is not None:
        args.json.write_text(json.dumps({"summary": summary, "samples": samples}, indent=2) + "\n")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
