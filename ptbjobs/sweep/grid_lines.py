"""Where a key stands in a grid file, so that every error names the file, the line and the key.
tomllib keeps no positions: the line is found by a plain text search for the key in its table."""

from __future__ import annotations

import re
from pathlib import Path

from ptbjobs.core.errors import ConfigError


class GridError(ConfigError):
    """A problem in a grid file; the message already names the file, line and key."""


class KeyLocator:
    """Builds error messages with the line of a key in the file, found by a plain text search
    (tomllib keeps no positions); `table` is "" for top-level keys."""

    def __init__(self, path: Path, text: str):
        self.path = path
        self.lines = text.splitlines()

    def header_line(self, table: str, index: int = 0) -> int | None:
        """The line of the `index`-th `[table]` or `[[table]]` header."""
        headers = [i for i, line in enumerate(self.lines)
                   if re.fullmatch(rf"\s*\[\[?\s*{re.escape(table)}\s*\]\]?\s*(#.*)?", line)]
        return headers[index] + 1 if len(headers) > index else None

    def line_of(self, table: str, key: str, index: int = 0) -> int | None:
        start = 0
        if table:
            header = self.header_line(table, index)
            if header is None:  # written with dotted keys instead: `defaults.lr = 1`
                return self._first_match(rf"\s*{re.escape(table)}\s*\.\s*{re.escape(key)}\s*=", 0, len(self.lines))
            start = header
        elif (header := self.header_line(key)) is not None:  # a table at the top level: [axis]
            return header
        end = len(self.lines)
        for i in range(start, len(self.lines)):
            if table and re.match(r"\s*\[", self.lines[i]):
                end = i
                break
        # a key at the start of a line first, then one inside an inline table (match = { key = ... })
        for pattern in (rf"\s*{re.escape(key)}\s*=", rf".*[{{,]\s*{re.escape(key)}\s*="):
            if (found := self._first_match(pattern, start, end)) is not None:
                return found
        return None

    def _first_match(self, pattern: str, start: int, end: int) -> int | None:
        return next((i + 1 for i in range(start, end) if re.match(pattern, self.lines[i])), None)

    def place(self, line: int | None) -> str:
        return f"{self.path}:{line}" if line else str(self.path)

    def error(self, table: str, key: str, problem: str, hint: str | None = None, index: int = 0) -> GridError:
        place = self.place(self.line_of(table, key, index) if key else None)
        shown = key if re.fullmatch(r"[A-Za-z0-9_-]+", key) else repr(key)
        dotted = f"{table}[{index}].{shown}" if table in ("overrides", "include", "exclude") else \
            (f"{table}.{shown}" if table else shown)
        return GridError(None, f"{place}: {dotted}: {problem}", hint)
