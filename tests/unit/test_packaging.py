"""The installed packages fit together.

xds-protos (Envoy's ext_proc stubs) ships its own, older copy of `opentelemetry/proto/*`; whichever
wheel pip unpacks last owns those files. With xds-protos' copy, the OTLP exporters fail to import and
a sidecar with tracing on cannot start. `make setup` and the sidecar image reinstall
opentelemetry-proto's files after everything else.
"""

from __future__ import annotations

import importlib.metadata


def test_opentelemetry_proto_files_are_opentelemetry_protos_own() -> None:
    from opentelemetry.proto.common.v1 import common_pb2

    version = importlib.metadata.version("opentelemetry-sdk")
    assert hasattr(common_pb2, "InstrumentationScope"), (
        "opentelemetry/proto was overwritten by xds-protos' older copy: run `make setup`, or "
        f"pip install --no-deps --force-reinstall opentelemetry-proto=={version}"
    )


def test_both_otlp_exporters_and_the_ext_proc_stubs_import_together() -> None:
    from envoy.service.ext_proc.v3 import external_processor_pb2
    from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter as GrpcExporter
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter as HttpExporter

    assert (
        external_processor_pb2.ProcessingRequest.DESCRIPTOR.full_name
        == "envoy.service.ext_proc.v3.ProcessingRequest"
    )
    assert GrpcExporter is not HttpExporter
