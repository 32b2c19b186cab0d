"""One real control plane (etcd + kube-apiserver, RBAC, audit log) for the tests/e2e session."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from e2e_env import Cluster, require_tools


@pytest.fixture(scope="session")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    require_tools("kube-apiserver + etcd", "kubectl", "helm", "openssl")
    cluster = Cluster.start(tmp_path_factory.mktemp("e2e-cluster"))
    try:
        yield cluster
    finally:
        cluster.stop()
