"""`tollway console`: the read-only web console over a ledger, on 127.0.0.1 unless told otherwise."""

from __future__ import annotations

from pathlib import Path

import click

from tollway.meter_cli import console_auth_options, console_authorizer, console_budgets, db_option


@click.command("console")
@db_option
@click.option(
    "--host",
    default="127.0.0.1",
    show_default=True,
    help="Address to bind. Anything but loopback needs --auth kubernetes.",
)
@click.option("--port", default=8091, show_default=True, type=click.IntRange(1, 65535))
@click.option(
    "--jaeger-url",
    envvar="TOLLWAY_JAEGER_URL",
    default=None,
    help="Jaeger UI base URL, e.g. http://127.0.0.1:16686: a request's page links its trace there.",
)
@console_auth_options
def console(
    dsn: str,
    host: str,
    port: int,
    jaeger_url: str | None,
    auth: str,
    kube_url: str | None,
    kube_token_file: Path | None,
    kube_ca_file: Path | None,
    budgets_from: str | None,
) -> None:
    """Serve the console (overview, requests, sessions, users, properties) at http://HOST:PORT/console/."""
    from aiohttp import web

    from tollway.meter_cli import _open
    from tollway_meter.console import mount

    authorizer = console_authorizer(auth, host, kube_url, kube_token_file, kube_ca_file)
    budgets = console_budgets(budgets_from, authorizer)
    ledger = _open(dsn)
    app = web.Application()
    mount(app, ledger, jaeger_url, authorizer=authorizer, budgets=budgets)
    if authorizer is not None:

        async def close(_app: web.Application) -> None:
            await authorizer.close()

        app.on_cleanup.append(close)

    async def to_console(_request: web.Request) -> web.Response:
        raise web.HTTPFound("/console/")

    app.router.add_get("/", to_console)
    click.echo(f"console: http://{host}:{port}/console/ (auth {auth})")
    try:
        web.run_app(app, host=host, port=port, print=None)
    finally:
        ledger.close()
