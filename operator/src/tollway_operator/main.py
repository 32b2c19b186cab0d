"""Run the operator: settings read once, handlers registered on a fresh registry, Kopf in charge.

One replica, `Recreate` on upgrade, Kopf standalone (no peering): see docs/operator.md.
"""

from __future__ import annotations

import logging

import kopf

from tollway_operator.handlers import Operator
from tollway_operator.settings import OperatorSettings


def kopf_settings() -> kopf.OperatorSettings:
    settings = kopf.OperatorSettings()
    # Our Events are our own (budget alerts); Kopf's per-handler Events would be noise.
    settings.posting.enabled = False
    # A fixed set of resources and namespaces: no list/watch on Namespaces and CRDs is needed.
    settings.scanning.disabled = True
    # Tuned watches: the server ends each watch within 5 minutes; the client gives up on a silent one.
    settings.watching.server_timeout = 300
    settings.watching.client_timeout = 330
    settings.watching.connect_timeout = 10
    # Events of one object arriving together are handled as one (the default is 0.1 s).
    settings.batching.batch_window = 0.05
    return settings


def main(settings: OperatorSettings | None = None) -> None:
    settings = settings or OperatorSettings()
    logging.basicConfig(
        level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    # Kopf logs every handler call at INFO ("Handler 'secrets_changed' succeeded"): one per Secret
    # change in the cluster. Our own loggers say what was done.
    logging.getLogger("kopf.objects").setLevel(max(logging.WARNING, logging.getLogger().level))
    registry = kopf.OperatorRegistry()
    operator = Operator(settings)
    operator.register(registry)
    if settings.metrics_port:
        operator.metrics.serve(settings.metrics_port)
    kopf.run(
        registry=registry,
        settings=kopf_settings(),
        standalone=True,
        clusterwide=settings.clusterwide,
        namespaces=settings.namespaces,
        liveness_endpoint=f"http://0.0.0.0:{settings.health_port}/healthz" if settings.health_port else None,
    )
