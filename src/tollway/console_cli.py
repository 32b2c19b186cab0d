"""`tollway console`: the read-only web console over a ledger, on 127.0.0.1 unless told otherwise."""

from __future__ import annotations

import click

from tollway.meter_cli import db_option


@click.command("console")
@db_option
@click.option(
    "--host",
    default="127.0.0.1",
    show_default=True,
    help="Address to bind. The console has no login: keep it on loopback unless something in "
    "front of it checks access.",
)
@click.option("--port", default=8091, show_default=True, type=click.IntRange(1, 65535))
@click.option(
    "--jaeger-url",
    envvar="TOLLWAY_JAEGER_URL",
    default=None,
    help="Jaeger UI base URL, e.g. http://127.0.0.1:16686: a request's page links its trace there.",
)
def console(dsn: str, host: str, port: int, jaeger_url: str | None) -> None:
    """Serve the console (overview, requests, sessions, users, properties) at http://HOST:PORT/console/."""
    from aiohttp import web

    from tollway.meter_cli import _open
    from tollway_meter.console import mount

    ledger = _open(dsn)
    app = web.Application()
    mount(app, ledger, jaeger_url)

    async def to_console(_request: web.Request) -> web.Response:
        raise web.HTTPFound("/console/")

    app.router.add_get("/", to_console)
    click.echo(f"console: http://{host}:{port}/console/")
    try:
        web.run_app(app, host=host, port=port, print=None)
    finally:
        ledger.close()
