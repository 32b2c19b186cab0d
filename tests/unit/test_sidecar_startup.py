"""What the sidecar loads and tunes at start-up: only the tokenizers its routes need; the collector."""

from __future__ import annotations

import gc
import sys

import pytest

from tollway_sidecar import app
from tollway_sidecar.config.models import Backend, GatewayConfig, Route
from tollway_sidecar.quota import tokens


def _config(*models: str) -> GatewayConfig:
    backends = tuple(
        Backend(name=f"b{i}", provider="openai-compatible", model=m, base_url="http://127.0.0.1:9/v1")
        for i, m in enumerate(models)
    )
    return GatewayConfig(routes=(Route(id="r", name="r", namespace="n", model="m", backends=backends),))


def test_only_the_encodings_the_routes_models_use() -> None:
    assert tokens.encodings_for(app._models(_config("gpt-4o-mini", "gpt-4.1"))) == {"o200k_base"}
    assert tokens.encodings_for(app._models(_config("gpt-4", "gpt-3.5-turbo"))) == {"cl100k_base"}
    # Models tiktoken does not know are estimated with o200k_base.
    assert tokens.encodings_for(app._models(_config("claude-sonnet-4-5", "llama"))) == {"o200k_base"}
    assert tokens.encodings_for(app._models(GatewayConfig())) == set()


def test_a_loaded_encoding_counts_exactly_without_its_python_ranks() -> None:
    tokens.warm({"cl100k_base"})
    assert "cl100k_base" in tokens.loaded()
    encoding = tokens._load("cl100k_base")
    assert encoding._mergeable_ranks == {}  # the Rust encoder keeps its own copy
    assert encoding.encode_ordinary("hello world") == [15339, 1917]
    assert tokens.counter_for_model("gpt-4").count("hello world") == 2


def test_gc_is_frozen_and_collects_less_often_after_start_up() -> None:
    before, switch = gc.get_threshold(), sys.getswitchinterval()
    try:
        app._tune_gc()
        assert gc.get_threshold() == app.GC_THRESHOLDS
        assert gc.get_freeze_count() > 0
        assert sys.getswitchinterval() == pytest.approx(app.SWITCH_INTERVAL_S)
    finally:
        gc.unfreeze()
        gc.set_threshold(*before)
        sys.setswitchinterval(switch)


def test_an_answer_limit_below_the_request_limit_is_refused_at_start_up() -> None:
    from pydantic import ValidationError

    from tollway_sidecar.settings import SidecarSettings

    with pytest.raises(ValidationError, match="TOLLWAY_MAX_RESPONSE_BYTES"):
        SidecarSettings(max_request_bytes=2048, max_response_bytes=1024)
    settings = SidecarSettings()
    assert (settings.max_request_bytes, settings.max_response_bytes) == (10 << 20, 32 << 20)


def test_a_reply_slower_than_half_of_envoys_message_timeout_is_logged(
    caplog: pytest.LogCaptureFixture,
) -> None:
    import time

    from tollway_sidecar.extproc import server

    caplog.set_level("WARNING", logger="tollway.extproc")
    now = time.perf_counter()
    server.note_slow("router", "request_body", now - 0.1, "rid-fast")
    assert not caplog.records
    server.note_slow("router", "request_body", now - 1.5, "rid-slow")
    server.note_slow("router", "request_body", now - 2.5, "rid-late")
    slow, late = (record.getMessage() for record in caplog.records)
    assert "request_body" in slow and "rid-slow" in slow and "504" not in slow
    assert "rid-late" in late and "504" in late
