"""Manifests as written (in files or read from the cluster), the errors that name them, and the
loader for a folder of YAML/JSON files (local mode and `tollway compile`)."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import yaml

ResourceId = tuple[str, str, str]  # (kind, namespace, name)

MANIFEST_SUFFIXES = (".yaml", ".yml", ".json")


@dataclass(frozen=True)
class Manifest:
    """One parsed document: a resource as written in a file or read from the cluster."""

    kind: str
    api_version: str
    name: str
    namespace: str  # "" means the compile's default namespace
    body: Mapping[str, Any]
    source: str  # file path (with "#<document>" when a file holds several) or "cluster"
    # Who claimed first, for what only one resource may hold (a model name, a key value): the older
    # creationTimestamp (RFC 3339 UTC, as the API server writes it), then the lower `seq` (first seen,
    # for files, which have no timestamp), then namespace/name.
    created: str = ""
    seq: int = 0

    @property
    def id(self) -> ResourceId:
        return self.kind, self.namespace, self.name

    @property
    def claim_rank(self) -> tuple[str, int, str, str]:
        return self.created, self.seq, self.namespace, self.name

    @classmethod
    def from_object(cls, body: Mapping[str, Any], *, source: str, default_namespace: str = "") -> Manifest:
        metadata = body.get("metadata")
        metadata = metadata if isinstance(metadata, Mapping) else {}

        def text(value: object) -> str:
            return value if isinstance(value, str) else ""

        return cls(
            kind=text(body.get("kind")),
            api_version=text(body.get("apiVersion")),
            name=text(metadata.get("name")),
            namespace=text(metadata.get("namespace")) or default_namespace,
            body=body,
            source=source,
            created=text(metadata.get("creationTimestamp")),
        )


@dataclass(frozen=True)
class CompileError:
    source: str
    kind: str
    namespace: str
    name: str
    field: str  # dotted path, e.g. "spec.backends[1].baseURL"; "" for a whole file
    message: str
    reason: str = "Invalid"  # CamelCase, for a condition's `reason`; REFERENCE_REASONS for broken refs

    def __str__(self) -> str:
        resource = f"{self.kind} {self.namespace}/{self.name}" if self.name else self.kind
        return ": ".join(part for part in (self.source, resource, self.field, self.message) if part)


def load_manifests(
    directory: Path, *, default_namespace: str = "default"
) -> tuple[list[Manifest], list[CompileError]]:
    """Read *.yaml, *.yml and *.json in `directory` (not recursive), in file-name order.

    Multi-document YAML is supported; empty documents are skipped; a `v1` `List` is expanded. Each
    manifest's `seq` is its place in that order (1, 2, ...), which ranks claims (see `Manifest`).
    """
    if not directory.is_dir():
        return [], [CompileError(str(directory), "", "", "", "", "not a directory")]
    manifests: list[Manifest] = []
    errors: list[CompileError] = []
    for path in manifest_paths(directory):
        found, file_errors = load_file(path, default_namespace=default_namespace)
        manifests += (replace(m, seq=len(manifests) + 1) for m in found)
        errors += file_errors
    return manifests, errors


def manifest_paths(directory: Path) -> list[Path]:
    return sorted((p for p in directory.iterdir() if p.suffix in MANIFEST_SUFFIXES and p.is_file()), key=str)


def load_file(path: Path, *, default_namespace: str = "default") -> tuple[list[Manifest], list[CompileError]]:
    """The manifests of one file (those before a syntax error included) and its errors."""
    manifests: list[Manifest] = []
    errors: list[CompileError] = []
    documents, error = _read_documents(path)
    if error:
        errors.append(CompileError(str(path), "", "", "", "", error))
    for index, document in enumerate(documents, 1):
        source = f"{path}#{index}" if len(documents) > 1 else str(path)
        _collect(document, source, default_namespace, manifests, errors)
    return manifests, errors


def _read_documents(path: Path) -> tuple[list[object], str]:
    """The documents of one file (those before a syntax error included) and an error message or ""."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        return [], f"cannot read: {exc}"
    if path.suffix == ".json":
        try:
            return [json.loads(text)], ""
        except json.JSONDecodeError as exc:
            return [], f"invalid JSON at line {exc.lineno}, column {exc.colno}: {exc.msg}"
    documents: list[object] = []
    try:
        documents.extend(yaml.safe_load_all(text))
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        return documents, f"invalid YAML{where}: {exc.problem or exc.context}"
    except yaml.YAMLError as exc:
        return documents, f"invalid YAML: {exc}"
    return documents, ""


def _collect(
    document: object, source: str, namespace: str, manifests: list[Manifest], errors: list[CompileError]
) -> None:
    if document is None:
        return
    if not isinstance(document, dict):
        errors.append(
            CompileError(
                source, "", "", "", "", f"expected a resource (a mapping), got {type(document).__name__}"
            )
        )
        return
    if document.get("kind") == "List" and isinstance(document.get("items"), list):
        for i, item in enumerate(document["items"]):
            _collect(item, f"{source}.items[{i}]", namespace, manifests, errors)
        return
    manifest = Manifest.from_object(document, source=source, default_namespace=namespace)
    # Files have no creation time of their own (one copied from `kubectl get -o yaml` is not this
    # resource's): a claim is ranked by its place in the folder instead.
    manifests.append(replace(manifest, created="", seq=len(manifests) + 1))
