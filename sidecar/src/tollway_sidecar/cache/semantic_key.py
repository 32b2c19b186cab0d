"""The semantic partition of a call: everything but the last user message's text, hashed. Pure.

Semantic matching compares only the last user turn; every other part of the call (system prompt,
tools, earlier turns, parameters, the key's partition, seed headers) must be identical for a stored
answer to be served, so those parts name the set of vectors a call is compared against. A call whose
last message is not a user turn made of text (an image, a tool result, an assistant prefill) has no
semantic partition: it is matched exactly only.
"""

from __future__ import annotations

import copy
import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

from tollway_sidecar.cache.entry import Api
from tollway_sidecar.cache.key import cache_key
from tollway_sidecar.config.models import CachePartition, VirtualKey

__all__ = ["SemanticQuery", "semantic_query", "split_last_user"]

# Stands in for the compared text in the hashed body, so a body with the text removed is never
# mistaken for one whose last user message was really this string.
_PLACEHOLDER: Final = "\x00tollway-semantic-text\x00"


@dataclass(frozen=True, slots=True)
class SemanticQuery:
    partition: str  # hex SHA-256: which stored vectors this call may match
    text: str  # the last user message's text, what is embedded


def _text_of(content: Any) -> str | None:
    """A user message's text: a string, or a list of only text parts (joined by newlines)."""
    if isinstance(content, str):
        return content
    if not isinstance(content, list) or not content:
        return None
    texts: list[str] = []
    for part in content:
        if not isinstance(part, dict) or part.get("type") != "text" or not isinstance(part.get("text"), str):
            return None
        if set(part) - {"type", "text"}:
            return None  # e.g. Anthropic cache_control or citations: part of the exact key only
        texts.append(part["text"])
    return "\n".join(texts)


def split_last_user(api: Api, body: Mapping[str, Any]) -> tuple[dict[str, Any], str] | None:
    """The body with the last user message's text replaced, and that text; None when the last
    message is not a user turn of text. `api` is kept for the two message shapes, which agree here."""
    del api  # chat and messages both keep turns in `messages` with `role` and `content`
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        return None
    last = messages[-1]
    if not isinstance(last, dict) or last.get("role") != "user":
        return None
    text = _text_of(last.get("content"))
    if text is None or not text.strip():
        return None
    stripped = dict(body)
    turn = copy.copy(last)
    turn["content"] = _PLACEHOLDER
    stripped["messages"] = [*messages[:-1], turn]
    return stripped, text


def semantic_query(
    *,
    api: Api,
    partition: CachePartition,
    key: VirtualKey,
    route_id: str,
    client_model: str,
    path: str,
    body: Mapping[str, Any],
    extra_parts: tuple[tuple[str, str], ...] = (),
) -> SemanticQuery | None:
    """The call's semantic partition and text, or None when it can only be matched exactly."""
    split = split_last_user(api, body)
    if split is None:
        return None
    stripped, text = split
    exact = cache_key(
        partition=partition,
        key=key,
        route_id=route_id,
        client_model=client_model,
        path=path,
        body=stripped,
        extra_parts=(("semantic", "v1"), *extra_parts),
    )
    # Hashed again so a partition name can never equal an exact entry's key.
    return SemanticQuery(hashlib.sha256(b"semantic:" + exact.encode()).hexdigest(), text)
