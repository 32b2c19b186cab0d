"""Paths for the chart tests (a module of its own, so tests import it by a unique name)."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "tollway"
