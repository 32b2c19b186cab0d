"""The folder `tollway dev` follows: compiled on every change, never losing what worked.

- A file that cannot be read or parsed (invalid YAML, a document that is not a mapping) counts as
  the resources last read from it, until it is fixed; a file that is removed is gone.
- A resource whose new version is rejected is served at its last good version (`lastgood`).
- Files carry no creation time, so the order of claims (a model name, a key value) is the order
  in which `tollway dev` first saw each resource: folder order (file names, then documents) at start,
  then the order of edits. A resource removed and added again is new.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path

from tollway_operator.compile import (
    CompileError,
    CompileResult,
    Manifest,
    ResourceId,
    load_file,
    manifest_paths,
)
from tollway_operator.lastgood import compile_keeping_last_good


@dataclass(frozen=True)
class FolderResult:
    result: CompileResult  # as served: `result.held` are resources kept at their last good version
    manifests: list[Manifest]  # as served, kept files and versions included
    kept_files: tuple[str, ...]  # files with errors whose previous content is still served


@dataclass
class Folder:
    directory: Path
    default_namespace: str = "default"
    _files: dict[Path, list[Manifest]] = field(default_factory=dict)  # last read without an error
    _first_seen: dict[ResourceId, int] = field(default_factory=dict)
    _last_good: dict[ResourceId, Manifest] = field(default_factory=dict)
    _seen: int = 0

    def compile(self) -> FolderResult:
        if not self.directory.is_dir():
            error = CompileError(str(self.directory), "", "", "", "", "not a directory")
            return self._compile([], [error], ())
        manifests: list[Manifest] = []
        errors: list[CompileError] = []
        kept: list[str] = []
        paths = manifest_paths(self.directory)
        for path in paths:
            found, file_errors = load_file(path, default_namespace=self.default_namespace)
            errors += file_errors
            if not file_errors:
                self._files[path] = found
            elif path in self._files:
                found = self._files[path]
                kept.append(str(path))
            manifests += found
        for gone in set(self._files) - set(paths):
            del self._files[gone]
        return self._compile(manifests, errors, tuple(kept))

    def _compile(
        self, manifests: list[Manifest], load_errors: list[CompileError], kept: tuple[str, ...]
    ) -> FolderResult:
        for m in manifests:
            if m.id not in self._first_seen:
                self._seen += 1
                self._first_seen[m.id] = self._seen
        present = {m.id for m in manifests}
        self._first_seen = {rid: n for rid, n in self._first_seen.items() if rid in present}
        ordered = [replace(m, seq=self._first_seen[m.id]) for m in manifests]
        guarded = compile_keeping_last_good(
            ordered, self._last_good, default_namespace=self.default_namespace
        )
        self._last_good = guarded.last_good
        result = guarded.result
        result = replace(result, errors=(*load_errors, *result.errors))
        served = [self._last_good.get(m.id, m) if m.id in result.held else m for m in ordered]
        return FolderResult(result, served, kept)
