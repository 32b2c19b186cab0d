"""Several sidecar workers: their addresses, their clusters in Envoy's resources, the plans each
worker names, and the settings they refuse."""

from __future__ import annotations

from pathlib import Path

import pytest

from tollway_sidecar.config.models import Backend, GatewayConfig, Route
from tollway_sidecar.envoy_bootstrap import bootstrap
from tollway_sidecar.runtime import CompiledConfig
from tollway_sidecar.settings import SidecarSettings
from tollway_sidecar.workers import WorkersError, backoff, check_workers, prepare_metrics_dir
from tollway_sidecar.xds import (
    EXTPROC_CLUSTER,
    cluster_for,
    clusters,
    worker_address,
    worker_extproc_cluster,
)


def _backend(name: str) -> Backend:
    return Backend(
        name=name, provider="openai-compatible", model="gpt-4o-mini", base_url=f"http://{name}:80/v1"
    )


FALLBACK = Route(id="fb", name="fb", namespace="default", model="fb", backends=(_backend("a"), _backend("b")))
WEIGHTED = Route(
    id="ab",
    name="ab",
    namespace="default",
    model="ab",
    strategy="Weighted",
    backends=(_backend("a").model_copy(update={"weight": 1}), _backend("b").model_copy(update={"weight": 3})),
)
SINGLE = Route(id="one", name="one", namespace="default", model="one", backends=(_backend("a"),))
CONFIG = GatewayConfig(routes=(FALLBACK, WEIGHTED, SINGLE)).with_checksum()


def test_one_worker_keeps_the_configured_address() -> None:
    assert worker_address("unix:/run/tw/extproc.sock", 0, 1) == "unix:/run/tw/extproc.sock"
    assert worker_address("127.0.0.1:7000", 0, 1) == "127.0.0.1:7000"


def test_each_worker_has_its_own_socket_or_port() -> None:
    assert [worker_address("unix:/run/tw/extproc.sock", i, 3) for i in range(3)] == [
        "unix:/run/tw/extproc-0.sock",
        "unix:/run/tw/extproc-1.sock",
        "unix:/run/tw/extproc-2.sock",
    ]
    assert [worker_address("127.0.0.1:7000", i, 2) for i in range(2)] == ["127.0.0.1:7000", "127.0.0.1:7001"]


def test_cluster_copies_are_named_per_worker_only_with_several() -> None:
    assert cluster_for("tollway_route_fb", 1, 1) == "tollway_route_fb"
    assert cluster_for("tollway_route_fb", 1, 2) == "tollway_route_fb__w1"
    assert cluster_for("tollway_route_fb", 0, 2) != cluster_for("tollway_route_fb", 1, 2)


def _upstream_grpc_cluster(cluster: dict[str, object]) -> str | None:
    options = cluster["typed_extension_protocol_options"]
    assert isinstance(options, dict)
    filters = next(iter(options.values())).get("http_filters")
    if filters is None:
        return None
    return str(filters[0]["typed_config"]["grpc_service"]["envoy_grpc"]["cluster_name"])


def test_clusters_with_an_upstream_filter_get_one_copy_per_worker_reaching_only_it() -> None:
    by_name = {c["name"]: c for c in clusters(CONFIG, workers=2)}
    # The fallback route's one order and the weighted route's two, twice each; the one-backend
    # route's cluster has no upstream filter and stays single.
    assert sorted(by_name) == sorted(
        [
            "tollway_route_fb__w0",
            "tollway_route_fb__w1",
            "tollway_route_ab__w0",
            "tollway_route_ab__w1",
            "tollway_route_ab_1__w0",
            "tollway_route_ab_1__w1",
            "tollway_route_one",
        ]
    )
    for name, cluster in by_name.items():
        upstream = _upstream_grpc_cluster(cluster)
        if name == "tollway_route_one":
            assert upstream is None
        else:
            assert upstream == worker_extproc_cluster(int(name[-1]))


def test_one_worker_has_the_clusters_it_always_had() -> None:
    names = [c["name"] for c in clusters(CONFIG)]
    assert names == ["tollway_route_fb", "tollway_route_ab", "tollway_route_ab_1", "tollway_route_one"]
    assert {_upstream_grpc_cluster(c) for c in clusters(CONFIG)} == {EXTPROC_CLUSTER, None}


def test_each_worker_names_its_own_clusters_and_envoy_has_every_one() -> None:
    known = {c["name"] for c in clusters(CONFIG, workers=2)}
    for worker in (0, 1):
        plans = CompiledConfig.build(CONFIG, worker=worker, workers=2).plans
        assert plans["fb"].clusters == (f"tollway_route_fb__w{worker}",)
        assert plans["ab"].clusters == (f"tollway_route_ab__w{worker}", f"tollway_route_ab_1__w{worker}")
        assert plans["one"].clusters == ("tollway_route_one",)
        assert {c for plan in plans.values() for c in plan.clusters} <= known
    assert CompiledConfig.build(CONFIG).plans["fb"].clusters == ("tollway_route_fb",)


def test_the_bootstrap_balances_router_streams_over_every_worker() -> None:
    document = bootstrap(
        listen_host="0.0.0.0",
        listen_port=8080,
        admin_port=9901,
        extproc_address="unix:/run/tw/extproc.sock",
        xds_directory=Path("/run/tw/xds"),
        max_request_bytes=1024,
        workers=2,
    )
    by_name = {c["name"]: c for c in document["static_resources"]["clusters"]}

    def pipes(name: str) -> list[str]:
        (group,) = by_name[name]["load_assignment"]["endpoints"]
        return [e["endpoint"]["address"]["pipe"]["path"] for e in group["lb_endpoints"]]

    assert pipes(EXTPROC_CLUSTER) == ["/run/tw/extproc-0.sock", "/run/tw/extproc-1.sock"]
    assert pipes(worker_extproc_cluster(0)) == ["/run/tw/extproc-0.sock"]
    assert pipes(worker_extproc_cluster(1)) == ["/run/tw/extproc-1.sock"]


def test_the_bootstrap_of_one_worker_has_one_extproc_cluster() -> None:
    document = bootstrap(
        listen_host="0.0.0.0",
        listen_port=8080,
        admin_port=9901,
        extproc_address="unix:/run/tw/extproc.sock",
        xds_directory=Path("/run/tw/xds"),
        max_request_bytes=1024,
    )
    names = [c["name"] for c in document["static_resources"]["clusters"]]
    assert names == [EXTPROC_CLUSTER, "tollway_unrouted"]


def test_several_workers_need_redis() -> None:
    check_workers(SidecarSettings(workers=1))
    check_workers(SidecarSettings(workers=2, redis_url="redis://127.0.0.1:6379/0"))
    with pytest.raises(WorkersError) as refused:
        check_workers(SidecarSettings(workers=2))
    assert "TOLLWAY_WORKERS=2" in str(refused.value) and "TOLLWAY_REDIS_URL" in str(refused.value)


def test_a_worker_that_keeps_dying_is_restarted_ever_later() -> None:
    assert [backoff(n) for n in range(1, 9)] == [0.0, 0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 30.0]


def test_the_metrics_folder_starts_empty(tmp_path: Path) -> None:
    (tmp_path / "counter_123.db").write_bytes(b"stale")
    (tmp_path / "keep.txt").write_text("not ours")
    assert prepare_metrics_dir(tmp_path) == tmp_path
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keep.txt"]
    fresh = prepare_metrics_dir(None)
    assert fresh.is_dir() and not list(fresh.iterdir())
    fresh.rmdir()


def test_tollway_dev_refuses_several_workers_without_redis(tmp_path: Path) -> None:
    from tollway.dev import DevError, DevGateway, DevOptions

    gateway = DevGateway(DevOptions(config_dir=tmp_path, state_dir=tmp_path / "state", workers=2))
    with pytest.raises(DevError, match="--workers 2 needs --redis"):
        gateway.start()
    assert gateway.children.started == []  # nothing was started


def test_the_sidecar_refuses_to_start_several_workers_without_redis(tmp_path: Path) -> None:
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if not k.startswith("TOLLWAY_")}
    env |= {"TOLLWAY_WORKERS": "2", "TOLLWAY_CONFIG_FILE": str(tmp_path / "config.json")}
    result = subprocess.run(
        [sys.executable, "-m", "tollway", "sidecar"], env=env, capture_output=True, text=True, timeout=60
    )
    assert result.returncode != 0
    assert "TOLLWAY_WORKERS=2 needs TOLLWAY_REDIS_URL" in result.stderr
