"""The Makefile runs every test tier: one `test-<folder>` target per folder of tests/ holding tests,
each running pytest on exactly its folder after the tools that folder's code starts, and `make help`
describing every target. A new tier (or a new tool a tier starts) without its target fails here.

Targets are read through `make -n` (what make would run), not by parsing the Makefile.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
TESTS = ROOT / "tests"
TOOLS = {p.stem for p in (ROOT / "scripts" / "tools").glob("*.sh")}
# A tool script named in a string literal, the way harness.tool_paths and the tool fixtures name them.
TOOL_NAMED = re.compile(r"""["']([a-z0-9-]+)\.sh["']""")
IMPORTED = re.compile(r"^\s*(?:from|import)\s+([a-z_][a-z0-9_]*)", re.MULTILINE)


def make(*args: str) -> str:
    """`make -n ARGS` in the repository, unaffected by an outer make (flags, variables, jobserver)."""
    outer = {"MAKEFLAGS", "MFLAGS", "MAKELEVEL", "MAKEOVERRIDES", "PYTEST_ARGS"}
    env = {k: v for k, v in os.environ.items() if k not in outer}
    command = ["make", "--no-print-directory", *args]
    result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, check=False)
    assert result.returncode == 0, f"make {' '.join(args)} failed:\n{result.stderr}"
    return result.stdout


def pytest_paths(target: str) -> list[list[str]]:
    """The arguments of each pytest that `make <target>` would run."""
    runs = []
    for line in make("-n", target).splitlines():
        words = shlex.split(line)
        if words[1:3] == ["-m", "pytest"]:
            runs.append(words[3:])
    return runs


def tools_run(target: str) -> set[str]:
    return set(re.findall(r"^bash scripts/tools/([a-z0-9-]+)\.sh\b", make("-n", target), re.MULTILINE))


def tier_folders() -> list[str]:
    return sorted(d.name for d in TESTS.iterdir() if d.is_dir() and any(d.rglob("test_*.py")))


def helper_modules() -> dict[str, Path]:
    """Modules of tests/ that other folders import by name (harness, redisserver, ...)."""
    return {p.stem: p for p in TESTS.glob("*/*.py") if not p.name.startswith(("test_", "conftest"))}


def tools_needed(folder: str) -> set[str]:
    """The tool scripts named by a folder's code and by the test helpers that code imports directly
    (not their own imports: jaeger_harness takes only tool_paths from harness, not its tools)."""
    helpers = helper_modules()
    own = list((TESTS / folder).rglob("*.py"))
    imported = {helpers[m] for path in own for m in IMPORTED.findall(path.read_text()) if m in helpers}
    needed: set[str] = set()
    for path in {*own, *imported}:
        needed |= {name for name in TOOL_NAMED.findall(path.read_text()) if name in TOOLS}
    return needed


def help_lines() -> dict[str, str]:
    lines = {}
    for line in make("help").splitlines():
        target, _, description = line.strip().partition(" ")
        lines[target] = description.strip()
    return lines


def makefile_targets() -> set[str]:
    text = (ROOT / "Makefile").read_text()
    return set(re.findall(r"^([a-zA-Z0-9_%-]+):(?!=)", text, re.MULTILINE))


def test_tier_folders_are_found() -> None:
    # The folders this repository has today, so that a broken discovery cannot pass vacuously.
    assert {"unit", "integration", "chart", "kube", "operator_e2e", "e2e"} <= set(tier_folders())


@pytest.mark.parametrize("folder", tier_folders())
def test_every_tier_folder_has_a_target_running_exactly_it(folder: str) -> None:
    target = f"test-{folder.replace('_', '-')}"
    assert target in help_lines(), f"tests/{folder}/ holds tests but the Makefile has no `{target}`"
    assert pytest_paths(target) == [[f"tests/{folder}"]]


@pytest.mark.parametrize("folder", tier_folders())
def test_every_tier_target_first_gets_the_tools_its_tests_start(folder: str) -> None:
    target = f"test-{folder.replace('_', '-')}"
    missing = tools_needed(folder) - tools_run(target)
    assert not missing, f"`make {target}` does not run scripts/tools/{{{','.join(sorted(missing))}}}.sh"


def test_every_test_target_runs_a_folder_that_exists() -> None:
    targets = [t for t in help_lines() if t.startswith("test-")]
    assert len(targets) >= len(tier_folders())
    for target in targets:
        for args in pytest_paths(target):
            for path in args:
                assert (ROOT / path).is_dir(), f"`make {target}` runs {path}, which does not exist"


def test_make_test_runs_every_tier_after_every_tool() -> None:
    """`make test` is one pytest over testpaths, and testpaths is the whole of tests/."""
    assert pytest_paths("test") == [[]]
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["pytest"]["ini_options"]
    assert config["testpaths"] == ["tests"]
    assert tools_run("test") == TOOLS
    ci = (ROOT / ".ci" / "run").read_text()
    assert ci.index("make lint") < ci.index("make test")


def test_the_old_names_still_work() -> None:
    assert pytest_paths("unit") == pytest_paths("test-unit")
    assert pytest_paths("integration") == pytest_paths("test-integration")


def test_help_describes_every_target() -> None:
    described = help_lines()
    assert makefile_targets() == set(described), "a target is missing from `make help`"
    assert all(described.values()), [t for t, d in described.items() if not d]
