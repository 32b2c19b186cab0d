"""A resource whose new version does not compile is served at its last good version, in the operator's
pure pass (`lastgood`) and in the folder `tollway dev` follows (`tollway.folder`)."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import yaml
from test_compile import backend, budget, key_secret, route, secret, vkey

from tollway.folder import Folder
from tollway_operator.compile import Manifest, ResourceId
from tollway_operator.lastgood import Guarded, compile_keeping_last_good


def manifests(*docs: dict[str, Any]) -> list[Manifest]:
    return [Manifest.from_object(doc, source="cluster") for doc in docs]


def good_then(first: list[dict[str, Any]], then: list[dict[str, Any]]) -> Guarded:
    before = compile_keeping_last_good(manifests(*first), {})
    assert before.result.errors == (), [str(e) for e in before.result.errors]
    return compile_keeping_last_good(manifests(*then), before.last_good)


def test_a_budget_edited_to_a_negative_limit_keeps_serving_its_last_limit_and_its_keys() -> None:
    docs = [key_secret(), vkey(budgetRefs=["monthly"]), route("chat")]
    after = good_then([budget(limit="10"), *docs], [budget(limit="-5"), *docs])

    result = after.result
    assert [(e.kind, e.name, e.field) for e in result.errors] == [("Budget", "monthly", "spec.limit")]
    assert result.held == frozenset({("Budget", "default", "monthly")})
    assert [str(b.limit_usd) for b in result.config.budgets] == ["10"]
    assert [k.name for k in result.config.keys] == ["team-a"]  # not left out for an invalid budget


def test_a_rule_edited_to_no_backends_keeps_its_backends_and_a_fix_replaces_them() -> None:
    after = good_then([route("chat")], [route("chat", backends=[])])
    assert after.result.held == frozenset({("RouteRule", "default", "chat")})
    assert [len(r.backends) for r in after.result.config.routes] == [1]

    renamed = backend("fixed")
    fixed = compile_keeping_last_good(manifests(route("chat", backends=[renamed])), after.last_good)
    assert fixed.result.errors == () and fixed.result.held == frozenset()
    assert [b.name for b in fixed.result.config.routes[0].backends] == ["fixed"]


def test_a_deleted_resource_is_not_kept() -> None:
    after = good_then([route("chat"), route("other")], [route("other")])
    assert [r.name for r in after.result.config.routes] == ["other"]
    assert ("RouteRule", "default", "chat") not in after.last_good


def test_a_last_good_version_that_no_longer_compiles_is_not_served() -> None:
    creds = {"credentialsSecretRef": {"name": "provider", "key": "apiKey"}}
    first = [secret("provider", apiKey="sk-1"), route("chat", backends=[backend(**creds)])]
    # The new version is broken and the old one's Secret is gone: neither can be served.
    after = good_then(first, [route("chat", backends=[])])
    assert after.result.config.routes == () and after.result.held == frozenset()
    assert [e.field for e in after.result.errors] == ["spec.backends"]
    # The old version stays the one to fall back on once its Secret is back.
    back = compile_keeping_last_good(
        manifests(secret("provider", apiKey="sk-1"), route("chat", backends=[])), after.last_good
    )
    assert back.result.held == frozenset({("RouteRule", "default", "chat")})


def test_a_resource_never_good_is_left_out_as_before() -> None:
    after = compile_keeping_last_good(manifests(route("chat", backends=[])), {})
    assert after.result.config.routes == () and after.result.held == frozenset()
    assert after.last_good == {}


# --- the folder of `tollway dev` ------------------------------------------------------------------------


def write(path: Path, *docs: dict[str, Any]) -> None:
    path.write_text(yaml.safe_dump_all(docs, sort_keys=False))


def served(folder: Folder) -> dict[ResourceId, Any]:
    compiled = folder.compile()
    config = compiled.result.config
    return {("RouteRule", r.namespace, r.name): r for r in config.routes} | {
        ("VirtualKey", k.namespace, k.name): k for k in config.keys
    }


def test_a_file_turned_into_invalid_yaml_keeps_serving_what_it_held(tmp_path: Path) -> None:
    write(tmp_path / "keys.yaml", key_secret(), vkey())
    write(tmp_path / "routes.yaml", route("chat"))
    folder = Folder(tmp_path)
    assert set(served(folder)) == {("RouteRule", "default", "chat"), ("VirtualKey", "default", "team-a")}

    (tmp_path / "keys.yaml").write_text("apiVersion: v1\nkind: Secret\nmetadata: {name: [unclosed\n")
    compiled = folder.compile()
    assert compiled.kept_files == (str(tmp_path / "keys.yaml"),)
    assert [k.name for k in compiled.result.config.keys] == ["team-a"]
    assert "invalid YAML" in str(compiled.result.errors[0])

    (tmp_path / "keys.yaml").unlink()  # removing the file is meant: its resources go
    assert set(served(folder)) == {("RouteRule", "default", "chat")}


def test_in_a_folder_the_first_seen_claim_keeps_a_model(tmp_path: Path) -> None:
    write(tmp_path / "b.yaml", route("chat", "team-z", model="gpt-4o"))
    folder = Folder(tmp_path)
    assert set(served(folder)) == {("RouteRule", "team-z", "chat")}
    # Added later, in a file and namespace that both sort first: it is the newer claim.
    write(tmp_path / "a.yaml", route("chat", "aaa", model="gpt-4o"))
    compiled = folder.compile()
    assert [r.namespace for r in compiled.result.config.routes] == ["team-z"]
    (error,) = compiled.result.errors
    assert (error.namespace, error.reason) == ("aaa", "ModelConflict")


def test_a_secret_edited_into_a_bad_key_keeps_the_old_key_working() -> None:
    """The VirtualKey did not change, its Secret did: the Secret's last good value is served."""
    old = "tw-demo-0123456789abcdef"
    after = good_then(
        [key_secret(value=old), vkey(), route("chat")], [key_secret(value="short"), vkey(), route("chat")]
    )

    result = after.result
    assert result.held == frozenset(
        {("Secret", "default", "team-a-key"), ("VirtualKey", "default", "team-a")}
    )
    assert [k.key_sha256 for k in result.config.keys] == [hashlib.sha256(old.encode()).hexdigest()]
    (error,) = result.errors
    assert (error.kind, error.name, error.field) == ("VirtualKey", "team-a", "spec.secretRef.key")
    assert "5 characters long" in error.message


def test_a_secret_whose_old_value_would_break_something_else_is_not_held() -> None:
    """Rotating a key Secret to a value that fails is held; a good rotation is not undone for it."""
    first = [
        key_secret("a", "tw-a-0123456789abcdef"),
        vkey("a"),
        key_secret("b", "tw-b-0123456789abcdef"),
        vkey("b"),
    ]
    # a is rotated to a good value, b to one that is too short: only b's Secret (and key) are held.
    then = [key_secret("a", "tw-a-new-0123456789abcdef"), vkey("a"), key_secret("b", "tw-b"), vkey("b")]
    after = good_then(first, then)
    assert after.result.held == frozenset({("Secret", "default", "b-key"), ("VirtualKey", "default", "b")})
    hashes = {k.name: k.key_sha256 for k in after.result.config.keys}
    assert hashes["a"] == hashlib.sha256(b"tw-a-new-0123456789abcdef").hexdigest()
    assert hashes["b"] == hashlib.sha256(b"tw-b-0123456789abcdef").hexdigest()
