"""Reading the console's pages in tests: tables by id as rows of cell text, links, and row ids."""

from __future__ import annotations

from dataclasses import dataclass, field
from html.parser import HTMLParser


@dataclass
class Page:
    tables: dict[str, list[list[str]]] = field(default_factory=dict)
    links: dict[str, str] = field(default_factory=dict)  # element id → href
    row_ids: list[str] = field(default_factory=list)  # data-id of each request row, in order
    texts: dict[str, str] = field(default_factory=dict)  # element id → its text


VOID = frozenset({"input", "meta", "br", "img", "link", "hr"})


class _Reader(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.page = Page()
        self._table: str | None = None
        self._row: list[str] | None = None
        self._cell: list[str] | None = None
        self._open_ids: list[tuple[str, str, int]] = []  # (id, tag, depth)
        self._depth = 0
        self._id_text: dict[str, list[str]] = {}

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k: v or "" for k, v in attrs}
        if tag in VOID:
            return
        self._depth += 1
        if "id" in a:
            self._open_ids.append((a["id"], tag, self._depth))
            self._id_text[a["id"]] = []
            if tag == "a":
                self.page.links[a["id"]] = a.get("href", "")
        if tag == "table" and "id" in a:
            self._table = a["id"]
            self.page.tables[self._table] = []
        elif tag == "tr" and self._table is not None:
            self._row = []
            if "data-id" in a:
                self.page.row_ids.append(a["data-id"])
        elif tag in ("td", "th") and self._row is not None:
            self._cell = []

    def handle_endtag(self, tag: str) -> None:
        if tag in ("td", "th") and self._cell is not None and self._row is not None:
            self._row.append(" ".join("".join(self._cell).split()))
            self._cell = None
        elif tag == "tr" and self._row is not None and self._table is not None:
            self.page.tables[self._table].append(self._row)
            self._row = None
        elif tag == "table":
            self._table = None
        while self._open_ids and self._open_ids[-1][2] >= self._depth and self._open_ids[-1][1] == tag:
            ident = self._open_ids.pop()[0]
            self.page.texts[ident] = " ".join("".join(self._id_text[ident]).split())
        self._depth -= 1

    def handle_data(self, data: str) -> None:
        if self._cell is not None:
            self._cell.append(data)
        for ident, _, _ in self._open_ids:
            self._id_text[ident].append(data)


def read_page(html: str) -> Page:
    reader = _Reader()
    reader.feed(html)
    reader.close()
    return reader.page


def body_rows(table: list[list[str]]) -> list[list[str]]:
    """A table's rows without its header row."""
    return table[1:]
