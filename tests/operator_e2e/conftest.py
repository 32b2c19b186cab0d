"""A real control plane for the operator's tests: one per session, with the CRDs and deploy/rbac/."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from stack import ControlPlane, start_control_plane


class Plane:
    def __init__(self, cp: ControlPlane, audit_log: Path) -> None:
        self.cp = cp
        self.audit_log = audit_log


@pytest.fixture(scope="session")
def plane(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Plane]:
    cp, audit_log = start_control_plane(tmp_path_factory.mktemp("operator-e2e"))
    try:
        yield Plane(cp, audit_log)
    finally:
        cp.stop()
