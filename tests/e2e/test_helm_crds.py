"""The CRDs' life through Helm, against a real kube-apiserver of this module's own (tests/kube/harness.py).

CRDs are cluster-wide and the session's cluster may already hold a release that owns them (the
cluster-less test's), so this story starts from an empty control plane: `helm install` on a fresh
cluster creates the CRDs; `helm upgrade` to a chart whose Budget CRD changed applies the change (Helm
never upgrades a chart's crds/ folder, which is why the chart renders them as templates); `helm
uninstall` leaves the CRDs and the users' resources (`helm.sh/resource-policy: keep`); a second release
in the same cluster installs with `crds.install=false`; installing the first release again takes the
kept CRDs back; CRDs made without Helm (by the chart's former crds/ folder) are taken over by the
commands docs/operator.md gives.
"""

from __future__ import annotations

import re
import shlex
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from e2e_env import CHART, ROOT, Cluster, documents, require_tools

RELEASE, NAMESPACE = "tollway", "tollway-system"
CRD_NAMES = sorted(
    documents(path.read_text())[0]["metadata"]["name"] for path in (ROOT / "crds").glob("*.yaml")
)
BUDGET = """\
apiVersion: tollway.dev/v1alpha1
kind: Budget
metadata: {name: monthly, namespace: team-a}
spec: {limit: "250.00"}
"""
# A field only the changed chart's Budget CRD has: strict validation refuses it before the upgrade.
OWNED_BUDGET = """\
apiVersion: tollway.dev/v1alpha1
kind: Budget
metadata: {name: owned, namespace: team-a}
spec: {limit: "10", costCenter: cc-42}
"""


@pytest.fixture(scope="module")
def fresh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    require_tools("kube-apiserver + etcd", "kubectl", "helm", "openssl")
    cluster = Cluster.start(tmp_path_factory.mktemp("helm-crds"))
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture(scope="module")
def installed(fresh: Cluster) -> Cluster:
    """The README's install, the first thing this cluster sees."""
    assert fresh.get("crd", "budgets.tollway.dev") is None
    fresh.install(RELEASE, NAMESPACE)
    fresh.cp.kubectl("create", "namespace", "team-a")
    fresh.cp.kubectl("apply", "-f", "-", input=BUDGET)
    return fresh


def changed_chart(workdir: Path) -> Path:
    """This chart as its next version would be: version 0.1.1, the Budget CRD with one more printer
    column and one more optional spec field (wherever the chart keeps its CRD files)."""
    chart = workdir / "tollway"
    shutil.rmtree(chart, ignore_errors=True)
    shutil.copytree(CHART, chart)
    meta = chart / "Chart.yaml"
    meta.write_text(re.sub(r"(?m)^version: 0\.1\.0$", "version: 0.1.1", meta.read_text(), count=1))
    (budget,) = [p for p in chart.rglob("tollway.dev_budgets.yaml")]
    text = budget.read_text()
    column = "        - {name: Period, type: string, jsonPath: .spec.period}\n"
    field = "                period:\n"
    assert column in text and field in text, "the Budget CRD changed: update this test's edit"
    text = text.replace(column, column + "        - {name: Action, type: string, jsonPath: .spec.action}\n")
    text = text.replace(
        field,
        "                costCenter:\n"
        "                  type: string\n"
        "                  maxLength: 63\n"
        "                  description: Who pays for this budget.\n" + field,
    )
    budget.write_text(text)
    return chart


def stored_crd(cluster: Cluster, name: str) -> dict[str, Any]:
    crd = cluster.get("crd", name)
    assert crd is not None, f"CRD {name} is not in the API"
    return crd


def spec_properties(crd: dict[str, Any]) -> dict[str, Any]:
    (version,) = crd["spec"]["versions"]
    properties: dict[str, Any] = version["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"]
    return properties


def columns(crd: dict[str, Any]) -> list[str]:
    (version,) = crd["spec"]["versions"]
    return [c["name"] for c in version["additionalPrinterColumns"]]


def test_install_on_a_fresh_cluster_creates_the_crds_and_upgrade_applies_a_changed_one(
    installed: Cluster, tmp_path: Path
) -> None:
    cluster = installed
    # The install created each CRD of crds/, established, with the schema as written, kept on uninstall.
    for path in sorted((ROOT / "crds").glob("*.yaml")):
        (want,) = documents(path.read_text())
        crd = stored_crd(cluster, want["metadata"]["name"])
        assert {c["type"]: c["status"] for c in crd["status"]["conditions"]}["Established"] == "True"
        assert crd["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
        assert crd["metadata"]["annotations"]["meta.helm.sh/release-name"] == RELEASE
        assert crd["metadata"]["labels"]["helm.sh/chart"] == "tollway-0.1.0"
        assert crd["spec"]["names"] == {**crd["spec"]["names"], **want["spec"]["names"]}
        for w, got in zip(want["spec"]["versions"], crd["spec"]["versions"], strict=True):
            assert got["schema"] == w["schema"], f"{path.name} {w['name']}: the server changed the schema"
            assert got.get("additionalPrinterColumns") == w.get("additionalPrinterColumns")
    kept = cluster.get("budget", "monthly", "team-a")
    assert kept is not None
    refused = cluster.cp.kubectl("apply", "--validate=strict", "-f", "-", input=OWNED_BUDGET, check=False)
    assert refused.returncode != 0 and 'unknown field "spec.costCenter"' in refused.stderr, refused.stderr

    # helm upgrade to the next chart version: the server now has its Budget CRD.
    cluster.cp.helm(
        "upgrade", RELEASE, str(changed_chart(tmp_path)), "--namespace", NAMESPACE, "--wait=hookOnly"
    )
    budget = stored_crd(cluster, "budgets.tollway.dev")
    assert budget["metadata"]["labels"]["helm.sh/chart"] == "tollway-0.1.1"
    assert "costCenter" in spec_properties(budget)
    assert columns(budget) == ["Limit", "Spent", "Remaining", "Period", "Action", "State", "Saved", "Age"]
    cluster.cp.kubectl("apply", "--validate=strict", "-f", "-", input=OWNED_BUDGET)
    owned = cluster.get("budget", "owned", "team-a")
    assert owned is not None and owned["spec"]["costCenter"] == "cc-42", "the new field was pruned"
    table = cluster.cp.kubectl("get", "budgets", "-n", "team-a").stdout
    assert table.split()[:7] == ["NAME", "LIMIT", "SPENT", "REMAINING", "PERIOD", "ACTION", "STATE"]
    after = cluster.get("budget", "monthly", "team-a")
    assert after is not None and after["metadata"]["uid"] == kept["metadata"]["uid"]

    # And back to this chart: its CRD again (the stored field stays in etcd, the schema no longer has it).
    cluster.cp.helm("upgrade", RELEASE, str(CHART), "--namespace", NAMESPACE, "--wait=hookOnly")
    budget = stored_crd(cluster, "budgets.tollway.dev")
    assert "costCenter" not in spec_properties(budget)
    assert budget["metadata"]["labels"]["helm.sh/chart"] == "tollway-0.1.0"


def test_uninstall_keeps_the_crds_and_resources_and_a_reinstall_takes_them_back(installed: Cluster) -> None:
    cluster = installed
    before = {name: stored_crd(cluster, name)["metadata"]["uid"] for name in CRD_NAMES}
    budget = cluster.get("budget", "monthly", "team-a")
    assert budget is not None

    removed = cluster.cp.helm("uninstall", RELEASE, "--namespace", NAMESPACE)
    for name in CRD_NAMES:
        assert name in removed.stdout + removed.stderr, f"helm did not report keeping {name}"
    assert cluster.get("deployment", f"{RELEASE}-operator", NAMESPACE) is None, "the release is still there"
    assert {name: stored_crd(cluster, name)["metadata"]["uid"] for name in CRD_NAMES} == before
    still = cluster.get("budget", "monthly", "team-a")
    assert still is not None and still["metadata"]["uid"] == budget["metadata"]["uid"]

    # Another release in the same cluster leaves the CRDs to the release that owns them ...
    clash = cluster.install("other", "other-system", check=False)
    assert clash.returncode != 0
    assert "budgets.tollway.dev" in clash.stderr and RELEASE in clash.stderr, clash.stderr
    cluster.install("other", "other-system", "--set", "crds.install=false")
    manifest = cluster.cp.helm("get", "manifest", "other", "--namespace", "other-system").stdout
    assert "CustomResourceDefinition" not in manifest

    # ... and the first release, installed again, takes them back.
    cluster.install(RELEASE, NAMESPACE)
    assert {name: stored_crd(cluster, name)["metadata"]["uid"] for name in CRD_NAMES} == before
    kinds = [d["kind"] for d in cluster.manifest(RELEASE, NAMESPACE)]
    assert kinds.count("CustomResourceDefinition") == len(CRD_NAMES)
    assert cluster.get("budget", "monthly", "team-a") is not None


def legacy_chart(workdir: Path) -> Path:
    """This chart as it was before its CRDs became templates: the same files in its crds/ folder."""
    chart = workdir / "legacy" / "tollway"
    shutil.copytree(CHART, chart)
    shutil.move(chart / "files" / "crds", chart / "crds")
    (chart / "templates" / "crds.yaml").unlink()
    return chart


def takeover_commands() -> list[list[str]]:
    """The kubectl commands docs/operator.md gives for handing CRDs made without Helm to a release."""
    section = (ROOT / "docs" / "operator.md").read_text().split("\n## CRDs and Helm\n", 1)[1]
    block = section.split("```sh\n", 1)[1].split("```", 1)[0]
    commands = [shlex.split(line) for line in block.replace("\\\n", " ").splitlines() if line.strip()]
    assert commands and all(c[0] == "kubectl" for c in commands), block
    return [c[1:] for c in commands]


def test_crds_made_without_helm_are_taken_over_with_the_documented_commands(
    installed: Cluster, tmp_path: Path
) -> None:
    cluster = installed
    for release, namespace in ((RELEASE, NAMESPACE), ("other", "other-system")):
        cluster.cp.helm("uninstall", release, "--namespace", namespace, check=False)
    # Not `--wait=true`: kubectl's wait for several CRDs at once can miss a deletion that finishes
    # before its watch starts and then hangs; poll for them instead.
    cluster.cp.kubectl("delete", "crd", *CRD_NAMES, "--wait=false")
    deadline = time.monotonic() + 60
    while any(cluster.get("crd", name) is not None for name in CRD_NAMES) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert all(cluster.get("crd", name) is None for name in CRD_NAMES)

    # A release of the chart as it was: Helm makes its crds/ folder's CRDs, without ownership metadata.
    cluster.cp.helm(
        "install",
        RELEASE,
        str(legacy_chart(tmp_path)),
        "--namespace",
        NAMESPACE,
        "--create-namespace",
        "--wait=hookOnly",
    )
    for name in CRD_NAMES:
        assert "meta.helm.sh/release-name" not in stored_crd(cluster, name)["metadata"].get("annotations", {})

    upgrade = ["upgrade", RELEASE, str(CHART), "--namespace", NAMESPACE, "--wait=hookOnly"]
    refused = cluster.cp.helm(*upgrade, check=False)
    assert refused.returncode != 0 and "invalid ownership metadata" in refused.stderr, refused.stderr

    for command in takeover_commands():
        cluster.cp.kubectl(*command)
    cluster.cp.helm(*upgrade)
    for name in CRD_NAMES:
        annotations = stored_crd(cluster, name)["metadata"]["annotations"]
        assert annotations["helm.sh/resource-policy"] == "keep"
        assert annotations["meta.helm.sh/release-name"] == RELEASE
    kinds = [d["kind"] for d in cluster.manifest(RELEASE, NAMESPACE)]
    assert kinds.count("CustomResourceDefinition") == len(CRD_NAMES)
