"""What each image's own environment can run: a venv built by exactly its Dockerfile's install lines
(`image_venv.py` says how and what differs from `docker build`), not the all-extras test venv.

The operator image has none of the sidecar's extras: an operator module that reaches the sidecar's
quota internals (and through them `tiktoken`) cannot even be imported there.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from image_venv import COLD_BUILD_S, DOCKERFILES, image_venv

OPERATOR = DOCKERFILES["tollway/operator"]
SIDECAR = DOCKERFILES["tollway/sidecar"]


@pytest.mark.timeout(60 + COLD_BUILD_S)
def test_the_operator_image_imports_its_handlers_and_runs_its_entrypoint() -> None:
    image = image_venv(OPERATOR)
    # It is the operator's environment, not the test one: the sidecar's extras are absent.
    absent = image.run("python", "-c", "import importlib.util as u; print(u.find_spec('tiktoken'))")
    assert absent.stdout.strip() == "None", absent.stdout + absent.stderr

    handlers = image.run("python", "-c", "import tollway_operator.handlers, tollway_operator.main")
    assert handlers.returncode == 0, handlers.stderr
    # Everything `tollway operator` imports before Kopf takes over, as the CLI imports it.
    modules = "tollway.cli, tollway_operator.main, tollway_operator.settings, tollway_operator.spend"
    cli = image.run("python", "-c", f"import {modules}; import tollway_sidecar.contract.redis_counters")
    assert cli.returncode == 0, cli.stderr

    help_text = image.run("tollway", "operator", "--help")
    assert help_text.returncode == 0, help_text.stderr
    assert "Run the Kubernetes operator" in help_text.stdout


@pytest.mark.timeout(60 + COLD_BUILD_S)
def test_the_sidecar_image_renders_envoys_bootstrap_and_imports_its_app(tmp_path: Path) -> None:
    image = image_venv(SIDECAR)
    app = image.run("python", "-c", "import tollway_sidecar.app")
    assert app.returncode == 0, app.stderr
    # The image's extra reinstall step put opentelemetry-proto's own files back over xds-protos' copy.
    otlp = image.run(
        "python", "-c", "from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter"
    )
    assert otlp.returncode == 0, otlp.stderr

    rendered = image.run("tollway", "envoy-bootstrap", "--out", str(tmp_path / "envoy"))
    assert rendered.returncode == 0, rendered.stderr
    assert (tmp_path / "envoy" / "envoy.json").is_file()
    assert (tmp_path / "envoy" / "xds" / "cds.json").is_file()


@pytest.mark.timeout(60 + COLD_BUILD_S)
def test_the_meter_image_has_only_the_meters_extra_and_runs_its_commands() -> None:
    image = image_venv(DOCKERFILES["tollway/meter"])
    for heavy in ("tiktoken", "grpc", "envoy", "opentelemetry"):
        absent = image.run("python", "-c", f"import importlib.util as u; print(u.find_spec('{heavy}'))")
        assert absent.stdout.strip() == "None", f"{heavy} in the meter image: {absent.stdout}{absent.stderr}"
    modules = image.run("python", "-c", "import tollway_meter.consumer, tollway_meter.api, psycopg")
    assert modules.returncode == 0, modules.stderr
    for command in (("meter", "run", "--help"), ("usage", "--help")):
        shown = image.run("tollway", *command)
        assert shown.returncode == 0, f"tollway {' '.join(command)}: {shown.stderr}"
