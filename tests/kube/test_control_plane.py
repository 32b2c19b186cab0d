"""The envtest-style control plane in harness.py: kubectl against it, and RBAC that really denies."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from harness import ApiError, ControlPlane

CRD = """\
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata:
  name: widgets.harness.tollway.dev
spec:
  group: harness.tollway.dev
  scope: Namespaced
  names: {plural: widgets, singular: widget, kind: Widget}
  versions:
    - name: v1
      served: true
      storage: true
      schema:
        openAPIV3Schema:
          type: object
          properties:
            spec:
              type: object
              required: [size]
              properties:
                size: {type: integer, minimum: 1}
              x-kubernetes-validations:
                - rule: "self.size <= 10"
                  message: "size must be at most 10"
"""


@pytest.fixture(scope="module")
def cp(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ControlPlane]:
    with ControlPlane.start(tmp_path_factory.mktemp("kube")) as control_plane:
        yield control_plane


def test_the_apiserver_reports_its_release(cp: ControlPlane) -> None:
    version = cp.api("GET", "/version")
    assert version["major"] == "1"
    assert version["gitVersion"].startswith(f"v1.{version['minor']}.")


def test_kubectl_applies_a_configmap(cp: ControlPlane, tmp_path: Path) -> None:
    cp.create_namespace("apply-cm")
    manifest = tmp_path / "cm.yaml"
    manifest.write_text(
        "apiVersion: v1\nkind: ConfigMap\n"
        "metadata: {name: settings, namespace: apply-cm}\n"
        "data: {mode: strict}\n"
    )
    cp.kubectl("apply", "-f", str(manifest))
    got = json.loads(cp.kubectl("get", "configmap", "settings", "-n", "apply-cm", "-o", "json").stdout)
    assert got["data"] == {"mode": "strict"}


def test_kubectl_applies_a_crd_and_its_cel_rule_is_enforced(cp: ControlPlane) -> None:
    cp.kubectl("apply", "-f", "-", input=CRD)
    cp.kubectl("wait", "--for=condition=Established", "--timeout=60s", "crd/widgets.harness.tollway.dev")
    cp.create_namespace("apply-crd")
    widget = (
        "apiVersion: harness.tollway.dev/v1\nkind: Widget\nmetadata: {{name: {name}, namespace: apply-crd}}\n"
    )
    cp.kubectl("apply", "-f", "-", input=widget.format(name="small") + "spec: {size: 3}\n")
    assert cp.kubectl("get", "widget", "small", "-n", "apply-crd", "-o", "name").stdout.strip() == (
        "widget.harness.tollway.dev/small"
    )
    too_big = cp.kubectl(
        "apply", "-f", "-", input=widget.format(name="big") + "spec: {size: 11}\n", check=False
    )
    assert too_big.returncode != 0
    assert "size must be at most 10" in too_big.stderr


def test_a_service_account_has_exactly_its_roles_permissions(cp: ControlPlane) -> None:
    cp.create_namespace("rbac")
    cp.create_service_account("rbac", "reader")
    cp.grant("rbac", "reader", [{"apiGroups": [""], "resources": ["configmaps"], "verbs": ["get", "list"]}])
    cp.kubectl("create", "configmap", "visible", "-n", "rbac", "--from-literal=k=v")
    reader = cp.service_account_kubeconfig("rbac", "reader")

    listed = cp.kubectl("get", "configmaps", "-n", "rbac", "-o", "name", kubeconfig=reader)
    assert "configmap/visible" in listed.stdout.split()
    for args in (
        ["get", "secrets", "-n", "rbac"],  # another resource
        ["get", "configmaps", "-n", "default"],  # another namespace
        ["create", "configmap", "new", "-n", "rbac"],  # another verb
    ):
        denied = cp.kubectl(*args, kubeconfig=reader, check=False)
        assert denied.returncode != 0, args
        assert "forbidden" in denied.stderr.lower(), denied.stderr
        assert "system:serviceaccount:rbac:reader" in denied.stderr


def test_a_token_without_any_role_is_denied(cp: ControlPlane) -> None:
    cp.create_namespace("rbac-none")
    cp.create_service_account("rbac-none", "nobody")
    token = cp.token("rbac-none", "nobody")
    assert cp.api("GET", "/api/v1/namespaces/rbac-none/configmaps")["kind"] == "ConfigMapList"  # admin may
    with pytest.raises(ApiError) as denied:
        cp.api("GET", "/api/v1/namespaces/rbac-none/configmaps", token=token)
    assert denied.value.status == 403
    with pytest.raises(ApiError) as unauthenticated:
        cp.api("GET", "/api/v1/namespaces/rbac-none/configmaps", token=token[:-4] + "AAAA")
    assert unauthenticated.value.status == 401


def test_helm_installs_a_chart(cp: ControlPlane, tmp_path: Path) -> None:
    chart = tmp_path / "mini"
    (chart / "templates").mkdir(parents=True)
    # kubeVersion: helm checks it against the apiserver's /version (kube.sh stamps the release there).
    (chart / "Chart.yaml").write_text(
        'apiVersion: v2\nname: mini\nversion: 0.1.0\nkubeVersion: ">=1.30.0-0"\n'
    )
    (chart / "templates" / "cm.yaml").write_text(
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: '{{ .Release.Name }}-cm'}\n"
        "data: {release: '{{ .Release.Name }}'}\n"
    )
    cp.create_namespace("helm")
    cp.helm("install", "demo", str(chart), "--namespace", "helm")
    got = json.loads(cp.kubectl("get", "configmap", "demo-cm", "-n", "helm", "-o", "json").stdout)
    assert got["data"] == {"release": "demo"}
    assert "demo" in cp.helm("list", "--namespace", "helm", "--short").stdout.split()
