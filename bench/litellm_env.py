"""The LiteLLM proxy in its own virtualenv, never in ours.

`${TOLLWAY_TOOLS_CACHE:-$HOME/.cache/tollway-tools}/litellm-venv`, installed from
bench/litellm-requirements.txt (`litellm[proxy]` pinned, with every dependency frozen), and
reinstalled when that file changes. `python -m bench.litellm_env` installs it and prints the path.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

REQUIREMENTS = Path(__file__).with_name("litellm-requirements.txt")


def tools_cache() -> Path:
    return Path(os.environ.get("TOLLWAY_TOOLS_CACHE") or Path.home() / ".cache" / "tollway-tools")


def ensure_litellm(quiet: bool = False) -> Path:
    venv = tools_cache() / "litellm-venv"
    digest = hashlib.sha256(REQUIREMENTS.read_bytes()).hexdigest()[:12]
    stamp = venv / f".installed-{digest}"
    if stamp.exists() and (venv / "bin" / "litellm").exists():
        return venv
    if not quiet:
        print(f"bench: installing the LiteLLM proxy into {venv} (once; ~1 minute)", flush=True)
    venv.parent.mkdir(parents=True, exist_ok=True)
    python = venv / "bin" / "python"
    if not python.exists():
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    pip = [str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check"]
    subprocess.run([*pip, "-r", str(REQUIREMENTS)], check=True)
    for old in venv.glob(".installed-*"):
        old.unlink()
    stamp.touch()
    return venv


if __name__ == "__main__":
    print(ensure_litellm())
