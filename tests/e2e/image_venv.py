"""A Tollway image's Python environment without a container runtime: a virtualenv built by the RUN
lines of the image's Dockerfile build stage, run as written, on a copy of what its COPY lines copy.

The test environment has every extra installed, so only an environment built the way the image is
built shows what the image lacks (the operator image has none of the sidecar's extras). What differs
from `docker build`, and why:

- `/opt/tollway` (the image's venv) → a folder under `~/.cache/tollway-tools/image-venvs/` named by a
  hash of the Dockerfile's build stage, this Python's version and every file its COPY lines copy, so
  a second run with the same source is instant and any change to the source builds a new one (the
  three newest builds of each Dockerfile are kept).
- the base image's `python` (`ARG PYTHON_IMAGE`) → this machine's interpreter of the same
  major.minor (checked), first on `PATH`.
- `--no-cache-dir` is dropped: it keeps the image's layer small; here pip's cache (and
  `PIP_FIND_LINKS`) make a rebuild fast. The packages and pins are exactly the Dockerfile's.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import re
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
IMAGE_VENV = "/opt/tollway"  # where the Dockerfiles put the image's virtualenv
# What a test that may build both image venvs from scratch allows for it (measured: about 2 minutes
# on 2 busy cores with pip's cache warm; the same source builds once, then it is cached).
COLD_BUILD_S = 420
KEEP_BUILDS = 3  # per Dockerfile
DOCKERFILES = {
    "tollway/sidecar": ROOT / "sidecar" / "Dockerfile",
    "tollway/operator": ROOT / "operator" / "Dockerfile",
    "tollway/meter": ROOT / "meter" / "Dockerfile",
}


def cache_root() -> Path:
    base = os.environ.get("TOLLWAY_TOOLS_CACHE") or str(Path.home() / ".cache" / "tollway-tools")
    return Path(base) / "image-venvs"


@dataclass(frozen=True)
class Instruction:
    name: str  # upper case: FROM, RUN, COPY, ...
    rest: str


@dataclass(frozen=True)
class Stage:
    base: str  # the FROM image (ARGs not expanded)
    alias: str | None
    instructions: tuple[Instruction, ...]

    def all(self, name: str) -> list[str]:
        return [i.rest for i in self.instructions if i.name == name]


def parse_dockerfile(path: Path) -> tuple[dict[str, str], list[Stage]]:
    """(the global ARGs' defaults, the stages). Comment lines are dropped also inside a continued
    instruction, as Docker does; continuation lines are joined."""
    lines: list[str] = []
    pending = ""
    for raw in path.read_text().splitlines():
        if not raw.strip() or raw.lstrip().startswith("#"):
            continue
        if raw.rstrip().endswith("\\"):
            pending += raw.rstrip()[:-1] + " "
            continue
        lines.append(pending + raw)
        pending = ""
    assert not pending, f"{path}: the last instruction continues past the end of the file"
    args: dict[str, str] = {}
    stages: list[tuple[str, str | None, list[Instruction]]] = []
    for line in lines:
        name, _, rest = line.strip().partition(" ")
        name, rest = name.upper(), rest.strip()
        if name == "FROM":
            words = rest.split()
            alias = words[2] if len(words) == 3 and words[1].upper() == "AS" else None
            stages.append((words[0], alias, []))
        elif stages:
            stages[-1][2].append(Instruction(name, rest))
        elif name == "ARG":
            key, _, default = rest.partition("=")
            args[key] = default
    return args, [Stage(base, alias, tuple(items)) for base, alias, items in stages]


def build_stage(path: Path) -> Stage:
    """The stage that installs the venv: the one whose RUN lines create `/opt/tollway`."""
    _args, stages = parse_dockerfile(path)
    builders = [s for s in stages if any(IMAGE_VENV in run for run in s.all("RUN"))]
    assert len(builders) == 1, f"{path}: expected one stage building {IMAGE_VENV}, found {len(builders)}"
    return builders[0]


def final_stage(path: Path) -> Stage:
    return parse_dockerfile(path)[1][-1]


def install_commands(path: Path) -> list[str]:
    """The build stage's RUN lines, as the shell runs them."""
    return build_stage(path).all("RUN")


def pip_installs(path: Path) -> list[list[str]]:
    """Every `pip install` of the build stage, as argument lists (from `install`, shell-split)."""
    found = []
    for run in install_commands(path):
        for command in re.split(r"\s&&\s", run):
            words = shlex.split(command)
            if len(words) >= 2 and words[0].endswith("/pip") and words[1] == "install":
                found.append(words[1:])
    return found


def python_minor(path: Path) -> str:
    """`3.11` from `ARG PYTHON_IMAGE=python:3.11.14-slim-bookworm`."""
    args, _stages = parse_dockerfile(path)
    match = re.fullmatch(r"python:(\d+)\.(\d+)(?:\.\d+)?(?:-.*)?", args.get("PYTHON_IMAGE", ""))
    assert match, f"{path}: ARG PYTHON_IMAGE={args.get('PYTHON_IMAGE')!r} is not a python:X.Y image"
    return f"{match[1]}.{match[2]}"


def _copies(stage: Stage) -> list[tuple[list[str], str]]:
    """(sources, destination) of each COPY from the build context (not `--from` another stage)."""
    out = []
    for rest in stage.all("COPY"):
        words = shlex.split(rest)
        assert not any(w.startswith("--") for w in words), f"COPY {rest}: flags are not mapped"
        out.append((words[:-1], words[-1]))
    return out


def _source_files(stage: Stage) -> list[tuple[Path, Path]]:
    """Every file the COPY lines copy, with its path relative to WORKDIR."""
    files = []
    for sources, destination in _copies(stage):
        assert not destination.startswith("/"), f"COPY … {destination}: only WORKDIR-relative is mapped"
        for source in sources:
            origin = ROOT / source
            if origin.is_file():
                target = Path(destination) / origin.name if destination.endswith("/") else Path(destination)
                files.append((origin, target))
                continue
            assert origin.is_dir(), f"COPY {source}: not in this checkout"
            for file in sorted(origin.rglob("*")):
                parts = file.relative_to(origin).parts
                if file.is_file() and "__pycache__" not in parts and not file.name.endswith(".pyc"):
                    files.append((file, Path(destination) / file.relative_to(origin)))
    return files


def _key(stage: Stage, files: list[tuple[Path, Path]]) -> str:
    digest = hashlib.sha256()
    digest.update(f"{sys.version_info[:3]}\n".encode())
    for instruction in stage.instructions:
        digest.update(f"{instruction.name} {instruction.rest}\n".encode())
    for origin, target in files:
        digest.update(f"{target.as_posix()}\n".encode())
        digest.update(hashlib.sha256(origin.read_bytes()).digest())
    return digest.hexdigest()[:16]


def local_command(run: str, venv: Path) -> str:
    command = run.replace(IMAGE_VENV, str(venv))
    return re.sub(r"\s--no-cache-dir(?=\s)", "", command)


@dataclass(frozen=True)
class ImageVenv:
    dockerfile: Path
    venv: Path

    @property
    def bin(self) -> Path:
        return self.venv / "bin"

    def run(self, *argv: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        """One of the image's executables, with only the image's PATH (no test-environment leaks)."""
        base = {"PATH": f"{self.bin}:/usr/bin:/bin", "HOME": str(self.venv.parent), "PYTHONNOUSERSITE": "1"}
        return subprocess.run(
            [str(self.bin / argv[0]), *argv[1:]],
            env={**base, **(env or {})},
            capture_output=True,
            text=True,
            timeout=120,
        )


def image_venv(dockerfile: Path) -> ImageVenv:
    """The image's venv, built now or reused from the cache. Fails naming the command that failed."""
    minor = python_minor(dockerfile)
    here = f"{sys.version_info.major}.{sys.version_info.minor}"
    assert here == minor, f"{dockerfile} builds on Python {minor}; this interpreter is {here}"
    stage = build_stage(dockerfile)
    files = _source_files(stage)
    slug = dockerfile.parent.name
    root = cache_root()
    root.mkdir(parents=True, exist_ok=True)
    home = root / f"{slug}-{_key(stage, files)}"
    venv = home / IMAGE_VENV.rsplit("/", 1)[-1]
    with (root / f"{slug}.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one build at a time; a second waiter reuses it
        if (home / "ok").exists():
            return ImageVenv(dockerfile, venv)
        shutil.rmtree(home, ignore_errors=True)
        workdir = home / "build"  # the stage's WORKDIR
        for origin, target in files:
            dest = workdir / target
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(origin, dest)
        shim = home / "base-image-bin"  # the base image's `python`
        shim.mkdir(parents=True)
        base_python = Path(getattr(sys, "_base_executable", sys.executable)).resolve()
        (shim / "python").symlink_to(base_python)
        env = {
            "PATH": f"{shim}:/usr/bin:/bin",
            "HOME": os.environ.get("HOME", str(home)),  # pip's cache
            **{k: v for k, v in os.environ.items() if k.startswith("PIP_")},
        }
        log = home / "build.log"
        for run in stage.all("RUN"):
            command = local_command(run, venv)
            with log.open("a") as out:
                out.write(f"$ {command}\n")
                out.flush()
                result = subprocess.run(
                    ["/bin/sh", "-c", command], cwd=workdir, env=env, stdout=out, stderr=subprocess.STDOUT
                )
            if result.returncode != 0:
                tail = "\n".join(log.read_text(errors="replace").splitlines()[-30:])
                raise AssertionError(
                    f"{dockerfile.relative_to(ROOT)} (WORKDIR → {workdir}): "
                    f"`{command}` exited with {result.returncode}:\n{tail}"
                )
        shutil.rmtree(workdir)
        (home / "ok").write_text(f"{dockerfile}\n")
        # Keep the newest few builds of this Dockerfile (several checkouts may share the cache).
        builds = sorted(
            (old for old in root.glob(f"{slug}-*") if (old / "ok").exists()),
            key=lambda old: (old / "ok").stat().st_mtime,
            reverse=True,
        )
        for old in builds[KEEP_BUILDS:]:
            shutil.rmtree(old, ignore_errors=True)
    return ImageVenv(dockerfile, venv)
