"""The CRDs in crds/ and the compiler's spec models describe the same fields.

The API server validates with the CRD schema; `tollway dev` and the operator validate with the
pydantic models. A field in one and not the other would be accepted by one and refused (or silently
dropped) by the other, so the two are walked side by side here.
"""

from __future__ import annotations

import filecmp
from pathlib import Path
from typing import Any, get_args, get_origin

import pytest
import yaml
from pydantic import BaseModel

from tollway_operator.resources import BudgetSpec, RouteRuleSpec, VirtualKeySpec

ROOT = Path(__file__).resolve().parents[2]
CRDS = ROOT / "crds"
CHART_CRDS = ROOT / "charts" / "tollway" / "files" / "crds"
SPECS: dict[str, type[BaseModel]] = {
    "Budget": BudgetSpec,
    "VirtualKey": VirtualKeySpec,
    "RouteRule": RouteRuleSpec,
}


def crd(kind: str) -> dict[str, Any]:
    for path in CRDS.glob("*.yaml"):
        document = yaml.safe_load(path.read_text())
        if document["spec"]["names"]["kind"] == kind:
            return dict(document)
    raise AssertionError(f"no CRD for {kind} in {CRDS}")


def _model_of(annotation: Any) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in get_args(annotation):
        found = _model_of(arg)
        if found is not None:
            return found
    return None


def _is_list(annotation: Any) -> bool:
    if get_origin(annotation) in (tuple, list):
        return True
    return any(_is_list(arg) for arg in get_args(annotation) if arg is not type(None))


def compare(model: type[BaseModel], schema: dict[str, Any], path: str) -> list[str]:
    problems = []
    fields = {(f.alias or name): f for name, f in model.model_fields.items()}
    properties = schema.get("properties", {})
    for name in sorted(set(fields) - set(properties)):
        problems.append(f"{path}.{name}: in the spec model, missing from the CRD")
    for name in sorted(set(properties) - set(fields)):
        problems.append(f"{path}.{name}: in the CRD, missing from the spec model")
    for name in sorted(set(fields) & set(properties)):
        nested = _model_of(fields[name].annotation)
        prop = properties[name]
        if nested is not None:
            sub = prop.get("items", prop) if _is_list(fields[name].annotation) else prop
            problems += compare(nested, sub, f"{path}.{name}")
    return problems


@pytest.mark.parametrize("kind", sorted(SPECS))
def test_crd_and_spec_model_have_the_same_fields(kind: str) -> None:
    (version,) = crd(kind)["spec"]["versions"]
    spec_schema = version["schema"]["openAPIV3Schema"]["properties"]["spec"]
    assert compare(SPECS[kind], spec_schema, "spec") == []


@pytest.mark.parametrize("kind", sorted(SPECS))
def test_crd_is_namespaced_in_the_tollway_category_with_status(kind: str) -> None:
    document = crd(kind)
    assert document["spec"]["group"] == "tollway.dev"
    assert document["spec"]["scope"] == "Namespaced"
    assert "tollway" in document["spec"]["names"]["categories"]
    (version,) = document["spec"]["versions"]
    assert version["name"] == "v1alpha1"
    assert version["subresources"] == {"status": {}}


def test_printer_columns_tell_the_story() -> None:
    def columns(kind: str) -> list[str]:
        (version,) = crd(kind)["spec"]["versions"]
        return [c["name"].upper() for c in version["additionalPrinterColumns"]]

    assert columns("Budget") == ["LIMIT", "SPENT", "REMAINING", "PERIOD", "STATE", "SAVED", "AGE"]
    assert columns("VirtualKey") == ["OWNER", "BUDGETS", "SPENT", "REQUESTS", "LAST-USED", "READY"]
    assert columns("RouteRule") == ["MODEL", "STRATEGY", "BACKENDS", "READY"]
    assert crd("VirtualKey")["spec"]["names"]["shortNames"] == ["vk"]
    assert crd("RouteRule")["spec"]["names"]["shortNames"] == ["rr"]


def test_the_chart_ships_byte_copies_of_the_crds() -> None:
    """The chart renders its CRDs from files/crds/ (Helm reads nothing outside the chart folder), so
    those files are copies of crds/, checked here without helm; tests/chart checks what is rendered."""
    names = sorted(p.name for p in CRDS.glob("*.yaml"))
    copies = CHART_CRDS.relative_to(ROOT)
    assert sorted(p.name for p in CHART_CRDS.glob("*.yaml")) == names, (
        f"{copies} must hold exactly the files of crds/: cp crds/*.yaml {copies}/"
    )
    match, mismatch, errors = filecmp.cmpfiles(CRDS, CHART_CRDS, names, shallow=False)
    assert mismatch + errors == [], (
        f"{copies} differs from crds/ (cp crds/*.yaml {copies}/): {mismatch + errors}"
    )
    assert match == names


class _NoDuplicateKeys(yaml.SafeLoader):
    """YAML keeps the last of two equal keys without a word: a second `description` hid a field's."""


def _mapping(loader: yaml.SafeLoader, node: yaml.MappingNode, deep: bool = False) -> Any:
    keys = [loader.construct_object(key, deep=deep) for key, _ in node.value]
    repeated = sorted({str(key) for key in keys if keys.count(key) > 1})
    if repeated:
        raise AssertionError(f"line {node.start_mark.line + 1}: repeated keys {repeated}")
    return yaml.SafeLoader.construct_mapping(loader, node, deep=deep)


_NoDuplicateKeys.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _mapping)


@pytest.mark.parametrize("path", sorted(CRDS.glob("*.yaml")), ids=lambda p: p.name)
def test_no_crd_repeats_a_key(path: Path) -> None:
    list(yaml.load_all(path.read_text(), Loader=_NoDuplicateKeys))
