"""One session's calls as a tree by session path (`/support/lookup` is a child of `/support`)."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from tollway_meter.console.reads import SessionCall


@dataclass
class PathNode:
    segment: str
    path: str
    calls: list[SessionCall] = field(default_factory=list)
    children: dict[str, PathNode] = field(default_factory=dict)

    @property
    def total_calls(self) -> int:
        return len(self.calls) + sum(child.total_calls for child in self.children.values())

    @property
    def total_cost_nanos(self) -> int:
        own = sum(call.cost_nanos for call in self.calls)
        return own + sum(child.total_cost_nanos for child in self.children.values())

    def sorted_children(self) -> list[PathNode]:
        return [self.children[name] for name in sorted(self.children)]


def build_tree(calls: Iterable[SessionCall]) -> PathNode:
    """The root is `/`; a call without a path hangs on the root itself."""
    root = PathNode("/", "/")
    for call in calls:
        node = root
        for segment in (s for s in call.path.split("/") if s):
            child = node.children.get(segment)
            if child is None:
                child = PathNode(segment, f"{node.path.rstrip('/')}/{segment}")
                node.children[segment] = child
            node = child
        node.calls.append(call)
    return root
