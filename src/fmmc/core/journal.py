"""An append-only JSON-lines journal of finished items, so a killed batch job loses at most one batch.

The first line is a header describing the run (model, input, options); each later line is one finished
item, written, flushed and fsynced a batch at a time. Opening a journal whose header matches reads the
finished items back (a line torn by a kill is ignored); one whose header differs was written by another
run and is either refused or started afresh, as the caller chooses.

    >>> j = Journal(Path(".preds.partial.jsonl"), {"model": "runs/a/model"}, on_mismatch="restart")  # doctest: +SKIP
    >>> j.append([{"id": "a", "label": "wood"}])                                                  # doctest: +SKIP
    >>> j.done["a"]                                                                               # doctest: +SKIP
    {'id': 'a', 'label': 'wood'}
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any, Literal

from fmmc.core.errors import naming
from fmmc.core.io import clean_json

log = logging.getLogger(__name__)


class JournalMismatch(ValueError):
    """The journal on disk belongs to another run (different model, input or options)."""


class Journal:
    def __init__(self, path: str | Path, header: dict[str, Any],
                 on_mismatch: Literal["refuse", "restart"] = "restart") -> None:
        self.path = Path(path)
        self.header = json.loads(json.dumps(clean_json(header)))  # as it reads back
        self.done: dict[str, dict[str, Any]] = {}
        self._needs_newline = False
        if self.path.is_file():
            old = self._read()
            if old is None or old != self.header:
                if on_mismatch == "refuse":
                    raise JournalMismatch(f"{self.path}: written by another run (model, input or options differ); "
                                          "remove it, or rerun with the same options")
                log.info("%s: from another run; starting afresh", self.path)
                self.done.clear()
                self.path.unlink()
        self._started = self.path.is_file()  # a new journal's file appears with its first batch

    def _read(self) -> dict[str, Any] | None:
        with open(self.path, "rb") as f:
            data = f.read()
        self._needs_newline = bool(data) and not data.endswith(b"\n")
        lines = data.split(b"\n")
        try:
            first = json.loads(lines[0])
            header = first["header"]
        except (ValueError, KeyError, TypeError, IndexError):
            return None
        for raw in lines[1:]:
            try:
                rec = json.loads(raw)
            except ValueError:
                continue  # a line torn by a kill
            if isinstance(rec, dict) and "key" in rec:
                self.done[str(rec["key"])] = rec
        return header

    def append(self, records: list[dict[str, Any]]) -> None:
        """Write ``records`` (each with a ``key``) durably, then remember them as done."""
        if records:
            self._write_lines(records)
            for rec in records:
                self.done[str(rec["key"])] = json.loads(json.dumps(clean_json(rec)))

    def _write_lines(self, records: list[dict[str, Any]]) -> None:
        if not self._started:
            self._started = True
            self.path.parent.mkdir(parents=True, exist_ok=True)
            records = [{"journal": "fmmc", "header": self.header}, *records]
        text = "".join(json.dumps(clean_json(r), ensure_ascii=False) + "\n" for r in records)
        with naming(self.path), open(self.path, "ab") as f:
            if self._needs_newline:
                f.write(b"\n")
                self._needs_newline = False
            f.write(text.encode("utf-8"))
            f.flush()
            os.fsync(f.fileno())

    def discard(self) -> None:
        """The results it protected are written: remove it."""
        self.path.unlink(missing_ok=True)
        self._started = False
        self.done.clear()

    @property
    def successes(self) -> int:
        return sum(1 for r in self.done.values() if "error" not in r)
