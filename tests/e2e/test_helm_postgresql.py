"""The bundled trial PostgreSQL's password across a release's life, in a real kube-apiserver.

PostgreSQL takes its password once, when it creates its data folder on the volume, and that volume
outlives upgrades and `helm uninstall` (a StatefulSet's claims are never deleted by Helm). So the
Secret holding the password must not change on `helm upgrade` (the chart looks it up in the cluster,
which `helm template` cannot do: only a real API server shows it), must survive `helm uninstall`, and
a later install of the same release must take it over with the same password.
"""

from __future__ import annotations

import base64

from e2e_env import CHART, Cluster

RELEASE, NAMESPACE = "tw-pg", "e2e-pg"
SECRET = f"{RELEASE}-tollway-postgresql"
BUNDLED = [
    "--set",
    "meter.enabled=true",
    "--set",
    "meter.postgresql.bundled.enabled=true",
    "--set",
    "crds.install=false",  # the session's other releases may own them
]


def stored_password(cluster: Cluster) -> str:
    secret = cluster.get("secret", SECRET, NAMESPACE)
    assert secret is not None, f"Secret {SECRET} is gone"
    return base64.b64decode(secret["data"]["password"]).decode()


def meter_replicas(cluster: Cluster) -> int:
    deployment = cluster.get("deployment", f"{RELEASE}-tollway-meter", NAMESPACE)
    assert deployment is not None
    return int(deployment["spec"]["replicas"])


def upgrade(cluster: Cluster, *values: str) -> None:
    cluster.cp.helm(
        "upgrade", RELEASE, str(CHART), "-n", NAMESPACE, "--wait=hookOnly", "--reuse-values", *values
    )


def test_the_password_outlives_upgrades_and_uninstall(cluster: Cluster) -> None:
    # As the README's kind walkthrough does: a release without the meter, then the meter enabled by
    # `helm upgrade --reuse-values`.
    cluster.install(RELEASE, NAMESPACE, "--set", "crds.install=false")
    assert cluster.get("secret", SECRET, NAMESPACE) is None
    upgrade(cluster, *BUNDLED)
    password = stored_password(cluster)
    assert len(password) == 32

    # An upgrade that changes something else, then one that asks for another password: the database
    # still has the first one, so the Secret keeps it.
    for extra in (["--set", "meter.replicas=3"], ["--set", "meter.postgresql.bundled.password=another-one"]):
        upgrade(cluster, *extra)
        assert stored_password(cluster) == password, extra
    assert meter_replicas(cluster) == 3  # the upgrades did apply

    cluster.cp.helm("uninstall", RELEASE, "-n", NAMESPACE)
    assert cluster.get("deployment", f"{RELEASE}-tollway-meter", NAMESPACE) is None
    assert stored_password(cluster) == password  # helm.sh/resource-policy: keep

    result = cluster.install(RELEASE, NAMESPACE, *BUNDLED, check=False)
    assert result.returncode == 0, f"reinstall over the kept Secret failed:\n{result.stderr}"
    assert stored_password(cluster) == password
    secret = cluster.get("secret", SECRET, NAMESPACE)
    assert secret is not None
    assert secret["metadata"]["annotations"]["meta.helm.sh/release-name"] == RELEASE
