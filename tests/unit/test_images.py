"""The Dockerfiles and the cluster-less end-to-end test cannot drift apart.

The e2e (tests/e2e/test_clusterless_e2e.py) runs every Tollway container from a venv built by its
image's Dockerfile (tests/e2e/image_venv.py). These checks keep that build whole: every Dockerfile's
build stage is made only of steps the venv build understands, installs this project with its own
extra, and ships that venv, and the venv build runs exactly those lines. (That every image the chart
deploys is one of these Dockerfiles needs helm: tests/e2e/test_image_drift.py.)
"""

from __future__ import annotations

import re
import sys
import tomllib
from pathlib import Path

import pytest

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

PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
# Which extra each image installs: its component folder's name.
EXTRAS = {repository: path.parent.name for repository, path in DOCKERFILES.items()}


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
