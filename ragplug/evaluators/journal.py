"""The record of a resumable experiment run: append-only JSON Lines, one record per finished step.

A run writes each result the moment it has it (one line, flushed and fsynced), so a run killed at any point
loses at most the line it was writing; a later run reads the journal back, keeps the last record of every key
and does only what is missing or failed. A torn last line (the process died mid-write) is skipped with a
warning; a torn line anywhere else means the file was damaged, and is an error rather than a silent loss.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

from ragplug.errors import StoreCorruptedError

__all__ = ["Journal"]

logger = logging.getLogger(__name__)


class Journal:
    """JSON Lines at ``path``, keyed by ``key(record)``; the last record of a key wins."""

    def __init__(self, path: Path, key: Callable[[Mapping[str, Any]], str]) -> None:
        self.path = path
        self._key = key
        self._lock = threading.Lock()
        self.records: dict[str, dict[str, Any]] = dict(self._read())

    def _read(self) -> Iterator[tuple[str, dict[str, Any]]]:
        if not self.path.exists():
            return
        lines = self.path.read_text(encoding="utf-8").split("\n")
        last = max((i for i, line in enumerate(lines) if line.strip()), default=-1)
        for i, line in enumerate(lines):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
                if not isinstance(record, dict):
                    raise ValueError("not a JSON object")  # noqa: EM101 - caught just below
                key = self._key(record)
            except (ValueError, KeyError, TypeError) as err:
                if i == last and not line.endswith("}"):
                    logger.warning("%s: skipping its torn last line (a run stopped while writing it)", self.path)
                    continue
                msg = f"{self.path}: line {i + 1} is not a record of this journal ({err}); the file is damaged"
                raise StoreCorruptedError(msg) from err
            yield key, record

    def get(self, key: str) -> dict[str, Any] | None:
        return self.records.get(key)

    def append(self, record: Mapping[str, Any]) -> None:
        """Write ``record`` durably, then remember it. Safe from several threads."""
        line = json.dumps(dict(record), ensure_ascii=False, allow_nan=False)
        with self._lock:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with self.path.open("a", encoding="utf-8") as fh:
                if fh.tell() > 0 and not self._ends_with_newline():
                    fh.write("\n")  # after a torn line: start a fresh one
                fh.write(line + "\n")
                fh.flush()
                os.fsync(fh.fileno())
            self.records[self._key(record)] = dict(record)

    def _ends_with_newline(self) -> bool:
        with self.path.open("rb") as fh:
            fh.seek(-1, os.SEEK_END)
            return fh.read(1) == b"\n"
