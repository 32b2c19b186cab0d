"""The `tollway` command: dev, compile, sidecar, operator, mock-provider, meter, usage, report."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING

import click

from tollway import console_cli, meter_cli, report_cli

if TYPE_CHECKING:
    from tollway_operator.compile import CompileResult


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def main() -> None:
    """Tollway: an LLM API gateway with virtual keys, budgets, routing and per-call cost."""


@main.command()
@click.option(
    "--config",
    "config_dir",
    type=click.Path(path_type=Path, file_okay=False, exists=True),
    default=Path("examples/local"),
    show_default=True,
    help="Folder of VirtualKey, Budget, RouteRule and Secret manifests.",
)
@click.option("--host", default="127.0.0.1", show_default=True, help="Address the gateway listens on.")
@click.option("--port", default=8080, show_default=True, help="Gateway port (OpenAI-compatible API).")
@click.option("--admin-port", default=9090, show_default=True, help="Sidecar admin port (/metrics, /spend).")
@click.option("--redis", "redis_url", default=None, help="Redis URL for quotas (default: in-memory).")
@click.option(
    "--mock-provider/--no-mock-provider",
    default=True,
    show_default=True,
    help="Start the built-in mock provider on --mock-port.",
)
@click.option("--mock-port", default=9000, show_default=True)
@click.option(
    "--state-dir",
    type=click.Path(path_type=Path, file_okay=False),
    default=None,
    help="Where logs, the compiled config and Envoy's files go (default: a new temp folder).",
)
@click.option(
    "--meter/--no-meter",
    default=None,
    help="Run the meter: the usage events (the Redis stream with --redis, else the sidecar's "
    "in-memory outbox) into <state-dir>/ledger.db for `tollway usage` (default: on).",
)
@click.option(
    "--console-port",
    default=8091,
    show_default=True,
    type=click.IntRange(0, 65535),
    help="The meter serves the web console on 127.0.0.1 at this port, open to local users (0: none).",
)
@click.option(
    "--workers",
    default=1,
    show_default=True,
    type=click.IntRange(1, 64),
    help="Sidecar worker processes (one core each); more than one needs --redis.",
)
@click.option("--log-level", default="INFO", show_default=True)
def dev(
    config_dir: Path,
    host: str,
    port: int,
    admin_port: int,
    redis_url: str | None,
    mock_provider: bool,
    mock_port: int,
    state_dir: Path | None,
    meter: bool | None,
    console_port: int,
    workers: int,
    log_level: str,
) -> None:
    """Run the gateway locally: sidecar + Envoy + meter (+ mock provider), until Ctrl-C."""
    from tollway.dev import DevOptions, run_dev

    options = DevOptions(
        config_dir=config_dir,
        host=host,
        port=port,
        admin_port=admin_port,
        redis_url=redis_url,
        mock_provider=mock_provider,
        mock_port=mock_port,
        state_dir=state_dir,
        log_level=log_level,
        meter=meter,
        console_port=console_port,
        workers=workers,
    )
    sys.exit(run_dev(options))


@main.command("compile")
@click.argument("directory", type=click.Path(path_type=Path, file_okay=False, exists=True))
@click.option(
    "--namespace", default="default", show_default=True, help="Namespace for manifests without one."
)
def compile_command(directory: Path, namespace: str) -> None:
    """Compile the manifests in DIRECTORY and print the GatewayConfig as JSON."""
    from tollway_operator.compile import compile_directory

    result = compile_directory(directory, default_namespace=namespace)
    for warning in result.warnings:  # served, but narrower than written: not a reason to fail
        click.echo(f"warning: {warning}", err=True)
    if result.errors:
        for error in result.errors:
            click.echo(str(error), err=True)
        for line in left_out(result):
            click.echo(line, err=True)
        sys.exit(1)
    click.echo(result.config.model_dump_json(indent=2))


def left_out(result: CompileResult) -> list[str]:
    """What the errors leave out of this config, and what a running gateway would do instead."""
    lines: list[str] = []
    for error in result.errors:
        if not error.kind and error.source:
            what = f"{error.source}: not read"
            instead = "`tollway dev` keeps serving what it last read from this file"
        elif error.name and (error.kind, error.namespace, error.name) not in result.accepted:
            what = f"{error.kind} {error.namespace}/{error.name}: left out of this config"
            instead = "`tollway dev` and the operator keep serving its last good version, if it had one"
        else:
            continue
        line = f"{what} ({instead})"
        if line not in lines:
            lines.append(line)
    return lines


@main.command("envoy-bootstrap")
@click.option(
    "--out",
    "out_dir",
    type=click.Path(path_type=Path, file_okay=False),
    required=True,
    help="Folder for envoy.json and the initial xds/cds.json, xds/rds.json.",
)
@click.option("--listen-host", default="0.0.0.0", show_default=True)
@click.option("--listen-port", default=8080, show_default=True)
@click.option("--envoy-admin-port", default=9901, show_default=True, help="Envoy admin (bound to loopback).")
@click.option("--extproc-address", default="unix:/var/run/tollway/extproc.sock", show_default=True)
@click.option(
    "--xds-dir",
    type=click.Path(path_type=Path, file_okay=False),
    default=None,
    help="Where the sidecar writes cds.json/rds.json (default: OUT/xds).",
)
@click.option("--max-request-bytes", default=10 * 1024 * 1024, show_default=True)
@click.option(
    "--max-response-bytes",
    default=32 * 1024 * 1024,
    show_default=True,
    help="Largest non-streamed answer (at least --max-request-bytes); above it, a 502.",
)
@click.option(
    "--workers",
    default=1,
    show_default=True,
    type=click.IntRange(1, 64),
    help="Sidecar worker processes (the sidecar's TOLLWAY_WORKERS): one ext_proc endpoint each.",
)
def envoy_bootstrap(
    out_dir: Path,
    listen_host: str,
    listen_port: int,
    envoy_admin_port: int,
    extproc_address: str,
    xds_dir: Path | None,
    max_request_bytes: int,
    max_response_bytes: int,
    workers: int,
) -> None:
    """Write Envoy's bootstrap (what the gateway Pod's init container runs)."""
    import json

    from tollway_sidecar.config.models import GatewayConfig
    from tollway_sidecar.envoy_bootstrap import bootstrap
    from tollway_sidecar.xds import write_dynamic_resources

    xds = xds_dir or out_dir / "xds"
    out_dir.mkdir(parents=True, exist_ok=True)
    try:
        document = bootstrap(
            listen_host=listen_host,
            listen_port=listen_port,
            admin_port=envoy_admin_port,
            extproc_address=extproc_address,
            xds_directory=xds,
            max_request_bytes=max_request_bytes,
            max_response_bytes=max_response_bytes,
            workers=workers,
        )
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--max-response-bytes") from None
    (out_dir / "envoy.json").write_text(json.dumps(document, indent=2))
    if not (xds / "cds.json").exists():
        # Envoy needs the files to start.
        write_dynamic_resources(GatewayConfig().with_checksum(), xds, workers=workers)
    click.echo(str(out_dir / "envoy.json"))


@main.command()
def sidecar() -> None:
    """Run the ext_proc sidecar (settings from TOLLWAY_* environment variables)."""
    from tollway_sidecar.workers import main as sidecar_main

    sidecar_main()


@main.command("operator")
@click.option(
    "--namespace",
    "namespaces",
    multiple=True,
    help="Serve only this namespace (repeatable); default: TOLLWAY_OPERATOR_NAMESPACES, else all.",
)
@click.option("--all-namespaces", is_flag=True, help="Serve every namespace (the default).")
def operator_command(namespaces: tuple[str, ...], all_namespaces: bool) -> None:
    """Run the Kubernetes operator (settings from TOLLWAY_OPERATOR_* variables; see docs/operator.md)."""
    from tollway_operator.main import main as operator_main
    from tollway_operator.settings import OperatorSettings

    if namespaces and all_namespaces:
        raise click.UsageError("--namespace and --all-namespaces exclude each other")
    settings = OperatorSettings()
    if namespaces or all_namespaces:
        settings = settings.model_copy(update={"namespaces": list(namespaces)})
    operator_main(settings)


@main.command("mock-provider")
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=9000, show_default=True)
@click.option("--latency-ms", default=0, show_default=True, help="Delay before response headers.")
@click.option("--ttft-ms", default=0, show_default=True, help="Streaming: delay before the first chunk.")
@click.option("--chunk-delay-ms", default=0, show_default=True, help="Streaming: delay between chunks.")
@click.option("--completion-tokens", default=20, show_default=True)
@click.option("--require-key", default=None, help="Answer 401 unless this provider key is sent.")
@click.option("--status", type=int, default=None, help="Answer every call with this error status.")
@click.option("--retry-after", default=None, help="With --status: the retry-after header to send.")
@click.option("--fail", default=None, help="Failure modes for every call (as x-mock-fail), e.g. reset.")
@click.option(
    "--aws-access-key-id",
    envvar="TOLLWAY_MOCK_AWS_ACCESS_KEY_ID",
    default=None,
    help="Bedrock endpoints: the access key id SigV4 signatures are checked against.",
)
@click.option(
    "--aws-secret-access-key",
    envvar="TOLLWAY_MOCK_AWS_SECRET_ACCESS_KEY",
    default=None,
    help="Bedrock endpoints: its secret (both unset: every signature is refused).",
)
@click.option(
    "--vertex-public-key-file",
    envvar="TOLLWAY_MOCK_VERTEX_PUBLIC_KEY_FILE",
    type=click.Path(exists=True, dir_okay=False),
    default=None,
    help="Vertex: the service account's public key (PEM) token requests' JWTs are verified with.",
)
@click.option(
    "--vertex-client-email",
    envvar="TOLLWAY_MOCK_VERTEX_CLIENT_EMAIL",
    default=None,
    help="Vertex: the service account email token requests must be issued by.",
)
@click.option(
    "--vertex-token-lifetime",
    envvar="TOLLWAY_MOCK_VERTEX_TOKEN_LIFETIME",
    type=int,
    default=3600,
    show_default=True,
    help="Vertex: seconds an access token from POST /token is valid.",
)
@click.option(
    "--sts-web-identity-token",
    envvar="TOLLWAY_MOCK_STS_WEB_IDENTITY_TOKEN",
    default=None,
    help="STS endpoint: the web identity token (JWT) AssumeRoleWithWebIdentity accepts.",
)
@click.option("--sts-role-arn", default=None, help="STS endpoint: the only role that may be assumed.")
@click.option(
    "--sts-duration-s",
    type=float,
    default=3600.0,
    show_default=True,
    help="STS endpoint: lifetime of the temporary keys it issues.",
)
def mock_provider(
    host: str,
    port: int,
    latency_ms: int,
    ttft_ms: int,
    chunk_delay_ms: int,
    completion_tokens: int,
    require_key: str | None,
    status: int | None,
    retry_after: str | None,
    fail: str | None,
    aws_access_key_id: str | None,
    aws_secret_access_key: str | None,
    vertex_public_key_file: str | None,
    vertex_client_email: str | None,
    vertex_token_lifetime: int,
    sts_web_identity_token: str | None,
    sts_role_arn: str | None,
    sts_duration_s: float,
) -> None:
    """Run the mock OpenAI/Anthropic-compatible provider (and Bedrock's Converse API, Vertex AI's)."""
    from tollway.mockprovider import MockSettings, run

    settings = MockSettings(
        latency_ms=latency_ms,
        ttft_ms=ttft_ms,
        chunk_delay_ms=chunk_delay_ms,
        completion_tokens=completion_tokens,
        require_key=require_key,
        status=status,
        retry_after=retry_after,
        fail=frozenset(part.strip() for part in (fail or "").split(",") if part.strip()),
        aws_access_key_id=aws_access_key_id,
        aws_secret_access_key=aws_secret_access_key,
        vertex_public_key=Path(vertex_public_key_file).read_text() if vertex_public_key_file else None,
        vertex_client_email=vertex_client_email,
        vertex_token_lifetime_s=vertex_token_lifetime,
        sts_web_identity_token=sts_web_identity_token,
        sts_role_arn=sts_role_arn,
        sts_duration_s=sts_duration_s,
    )
    run(host, port, settings)


# `tollway meter …` and `tollway usage` live in their own module (they import nothing until run).
meter_cli.register(main)
main.add_command(console_cli.console)
report_cli.register(main)


if __name__ == "__main__":
    main()
