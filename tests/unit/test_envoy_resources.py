"""The Envoy resources derived from a config, and loading configs from files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tollway_sidecar.config.loader import ConfigError, FileWatcher, load_config_file
from tollway_sidecar.config.models import Backend, Fallback, GatewayConfig, Route
from tollway_sidecar.envoy_bootstrap import bootstrap
from tollway_sidecar.extproc.upstream import backend_from_metadata
from tollway_sidecar.limits import GRPC_MESSAGE_MARGIN_BYTES
from tollway_sidecar.xds import (
    ROUTE_HEADER,
    clusters,
    route_configuration,
    write_dynamic_resources,
)

ROUTE = Route(
    id="team-a-chat",
    name="chat",
    namespace="team-a",
    model="chat",
    backends=(
        Backend(
            name="local", provider="openai-compatible", model="llama", base_url="http://10.0.0.5:8000/v1"
        ),
        Backend(name="cloud", provider="openai", model="gpt-4o-mini", base_url="https://api.openai.com/v1"),
    ),
    fallback=Fallback(on_status=(429, 503), on_timeout=False, max_attempts=2),
    timeout_ms=1500,
)
CONFIG = GatewayConfig(routes=(ROUTE,)).with_checksum()


def test_one_endpoint_per_backend_in_fallback_priority_order() -> None:
    cluster, pinned = clusters(CONFIG)
    # The OpenAI backend keeps stored Responses: a cluster reaching it alone serves their calls.
    assert pinned["name"] == "tollway_route_team-a-chat_pin_1"
    (only,) = pinned["load_assignment"]["endpoints"]
    assert only["lb_endpoints"][0]["metadata"]["filter_metadata"]["tollway"]["backend"] == "cloud"
    endpoints = cluster["load_assignment"]["endpoints"]
    assert [e["priority"] for e in endpoints] == [0, 1]
    first, second = (e["lb_endpoints"][0] for e in endpoints)
    assert first["endpoint"]["address"]["socket_address"] == {"address": "10.0.0.5", "port_value": 8000}
    assert second["endpoint"]["address"]["socket_address"] == {"address": "api.openai.com", "port_value": 443}
    assert first["metadata"]["filter_metadata"]["tollway"]["backend"] == "local"
    assert first["metadata"]["filter_metadata"]["envoy.transport_socket_match"] == {"tls": False}
    assert second["metadata"]["filter_metadata"]["envoy.transport_socket_match"] == {"tls": True}


def test_route_matches_the_route_header_and_retries_to_the_next_priority() -> None:
    config = route_configuration(CONFIG)
    first, catch_all = config["virtual_hosts"][0]["routes"]
    assert first["match"]["headers"] == [{"name": ROUTE_HEADER, "string_match": {"exact": "team-a-chat"}}]
    policy = first["route"]["retry_policy"]
    assert policy["num_retries"] == 1
    assert policy["retriable_status_codes"] == [429, 503]
    assert "gateway-error" not in policy["retry_on"]  # onTimeout: false
    # One timer per attempt, from the request to its first byte and between any two bytes after;
    # Envoy 1.40 stops the idle timer too once a per_try_timeout passes mid-response, so none is set.
    assert policy["per_try_idle_timeout"] == "1.500s"
    assert "per_try_timeout" not in policy
    assert policy["retry_priority"]["name"] == "envoy.retry_priorities.previous_priorities"
    assert first["route"]["timeout"] == "0s"
    assert catch_all["route"]["cluster"] == "tollway_unrouted"


def test_dynamic_resources_are_written_for_envoy(tmp_path: Path) -> None:
    write_dynamic_resources(CONFIG, tmp_path)
    cds = json.loads((tmp_path / "cds.json").read_text())
    rds = json.loads((tmp_path / "rds.json").read_text())
    assert cds["version_info"] == rds["version_info"] == CONFIG.version
    assert [c["name"] for c in cds["resources"]] == [
        "tollway_route_team-a-chat",
        "tollway_route_team-a-chat_pin_1",
    ]
    assert not list(tmp_path.glob(".*"))  # no temporary files left behind


def test_bootstrap_points_envoy_at_the_sidecar_and_the_files(tmp_path: Path) -> None:
    config = bootstrap(
        listen_host="0.0.0.0",
        listen_port=8080,
        admin_port=9901,
        extproc_address="unix:/run/tw.sock",
        xds_directory=tmp_path,
        max_request_bytes=1024,
        max_response_bytes=4096,
    )
    extproc = config["static_resources"]["clusters"][0]
    address = extproc["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"]
    assert address == {"pipe": {"path": "/run/tw.sock"}}
    assert config["dynamic_resources"]["cds_config"]["path_config_source"]["path"] == str(
        tmp_path / "cds.json"
    )
    listener = config["static_resources"]["listeners"][0]
    # One buffer limit per stream for request and answer: the answer's (the sidecar holds requests
    # to their own limit).
    assert listener["per_connection_buffer_limit_bytes"] == 4096
    hcm = listener["filter_chains"][0]["filters"][0]["typed_config"]
    envoy_grpc = hcm["http_filters"][0]["typed_config"]["grpc_service"]["envoy_grpc"]
    assert envoy_grpc["max_receive_message_length"] == 4096 + GRPC_MESSAGE_MARGIN_BYTES


def test_bootstrap_refuses_an_answer_limit_below_the_request_limit(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="max_response_bytes"):
        bootstrap(
            listen_host="0.0.0.0",
            listen_port=8080,
            admin_port=9901,
            extproc_address="unix:/run/tw.sock",
            xds_directory=tmp_path,
            max_request_bytes=2048,
            max_response_bytes=1024,
        )


def test_backend_name_is_read_from_envoy_host_metadata_text() -> None:
    text = (
        'filter_metadata {\n  key: "tollway"\n  value {\n    fields {\n      key: "backend"\n'
        '      value {\n        string_value: "primary-\\"x\\""\n      }\n    }\n  }\n}\n'
    )
    assert backend_from_metadata(text) == 'primary-\\"x\\"'
    assert backend_from_metadata("filter_metadata {}") is None


def test_config_file_with_a_wrong_checksum_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "config.json"
    path.write_text(CONFIG.model_copy(update={"checksum": "0" * 64}).model_dump_json())
    with pytest.raises(ConfigError, match="checksum"):
        load_config_file(path)
    path.write_text(CONFIG.model_dump_json())
    assert load_config_file(path) == CONFIG


def test_watcher_applies_good_configs_and_skips_bad_ones(tmp_path: Path) -> None:
    path = tmp_path / "config.json"
    applied: list[GatewayConfig] = []
    watcher = FileWatcher(path, applied.append)
    path.write_text(CONFIG.model_dump_json())
    assert watcher.check() is True
    assert watcher.check() is False  # unchanged
    path.write_text("{broken")
    assert watcher.check() is False
    assert watcher.last_error is not None
    assert "not a valid GatewayConfig" in watcher.last_error
    assert applied == [CONFIG]


def test_watcher_treats_a_missing_file_as_not_there_yet(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "config.json"
    applied: list[GatewayConfig] = []
    watcher = FileWatcher(path, applied.append)
    with caplog.at_level("INFO", logger="tollway.config"):
        assert watcher.check() is False
        assert watcher.check() is False
    assert [r.levelname for r in caplog.records] == ["INFO"]  # said once, and not as an error
    path.write_text(CONFIG.model_dump_json())
    assert watcher.check() is True
    assert applied == [CONFIG]


def test_an_invalid_config_is_reported_without_its_values() -> None:
    from tollway_sidecar.config.loader import parse_config

    document = json.loads(CONFIG.model_dump_json())
    document["routes"][0]["backends"][0]["credential"] = {"sk-secret-value-123": 1}  # wrong type
    with pytest.raises(ConfigError) as caught:
        parse_config(json.dumps(document).encode(), "config.json")
    message = str(caught.value)
    assert "routes.0.backends.0.credential" in message
    assert "sk-secret-value-123" not in message


def _http_filters(cluster: dict[str, object]) -> list[str]:
    options = cluster["typed_extension_protocol_options"]
    assert isinstance(options, dict)
    protocol = options["envoy.extensions.upstreams.http.v3.HttpProtocolOptions"]
    return [f["name"] for f in protocol.get("http_filters", [])]


def test_a_route_with_several_backends_runs_the_upstream_filter_per_attempt() -> None:
    cluster, pinned = clusters(CONFIG)
    assert _http_filters(cluster) == [
        "envoy.filters.http.ext_proc.upstream",
        "envoy.filters.http.upstream_codec",
    ]
    assert _http_filters(pinned) == []  # one backend: the router filter rewrites those calls
    (route, _) = route_configuration(CONFIG)["virtual_hosts"][0]["routes"]
    assert "rate_limited_retry_back_off" not in route["route"]["retry_policy"]  # the filter waits


def test_a_one_backend_route_is_rewritten_by_the_router_and_envoy_waits_out_retry_after() -> None:
    one = ROUTE.model_copy(update={"backends": ROUTE.backends[:1]})
    config = GatewayConfig(routes=(one,)).with_checksum()
    (cluster,) = clusters(config)
    assert _http_filters(cluster) == []  # no upstream ext_proc: the router filter rewrote the call
    (route, _) = route_configuration(config)["virtual_hosts"][0]["routes"]
    back_off = route["route"]["retry_policy"]["rate_limited_retry_back_off"]
    assert back_off == {
        "reset_headers": [{"name": "retry-after", "format": "SECONDS"}],
        "max_interval": "3.000s",  # timeout 1.5 s x 2 attempts
    }


def test_every_route_keeps_the_gateways_own_headers_from_the_provider() -> None:
    (route, _) = route_configuration(CONFIG)["virtual_hosts"][0]["routes"]
    assert set(route["request_headers_to_remove"]) == {
        "x-tollway-route",
        "x-tollway-cluster",
        "x-tollway-rid",
    }
