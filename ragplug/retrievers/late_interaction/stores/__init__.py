"""Multi-vector stores, found through a small registry so that nothing imports a backend it does not use.

``create_store("memory")`` makes a store by name; ``load_store(path)`` opens a saved folder with the store
class that wrote it (the manifest names its format). Built in: ``memory`` (:mod:`.memory`, the in-process
default, saved to folders in the :mod:`.folder` format) and ``postgres`` (``PgVectorStore``, extra
``postgres``). Another backend registers itself with :func:`register_store`.
"""

from __future__ import annotations

import importlib
import os
from typing import Any

from ragplug.errors import InvalidInputError, StoreCorruptedError
from ragplug.retrievers.late_interaction.base import EncoderIdentity, MultiVectorStore

__all__ = ["copy_records", "create_store", "load_store", "register_store"]

_STORES: dict[str, str] = {}  # name -> "module:Class"
_FOLDER_FORMATS: dict[str, str] = {}  # folder format name -> "module:Class" (a class with .load(path, encoder=))


def register_store(name: str, target: str, *, folder_format: str | None = None) -> None:
    """Make ``target`` (``"package.module:Class"``, imported when first used) available as ``name``; with
    ``folder_format``, :func:`load_store` opens folders whose manifest names that format with it."""
    _STORES[name] = target
    if folder_format is not None:
        _FOLDER_FORMATS[folder_format] = target


def _resolve(target: str) -> Any:
    module, _, attr = target.partition(":")
    return getattr(importlib.import_module(module), attr)


def create_store(name: str = "memory", **kwargs: Any) -> MultiVectorStore:
    """A new store of the backend ``name`` (``"memory"``, ``"postgres"``, or a registered one)."""
    if name not in _STORES:
        msg = f"unknown store {name!r}; registered: {sorted(_STORES)}"
        raise InvalidInputError(msg)
    store: MultiVectorStore = _resolve(_STORES[name])(**kwargs)
    return store


def load_store(path: str | os.PathLike[str], *, encoder: EncoderIdentity | None = None) -> MultiVectorStore:
    """Open a store saved to the folder ``path``, with the class that wrote it; with ``encoder``, refuse one
    written by another encoder."""
    from ragplug.retrievers.late_interaction.stores.folder import manifest_format

    fmt = manifest_format(path)
    if not isinstance(fmt, str) or fmt not in _FOLDER_FORMATS:
        msg = f"{path} holds a store in format {fmt!r}, which no registered store reads ({sorted(_FOLDER_FORMATS)})"
        raise StoreCorruptedError(msg)
    store: MultiVectorStore = _resolve(_FOLDER_FORMATS[fmt]).load(path, encoder=encoder)
    return store


def copy_records(
    source: MultiVectorStore, target: MultiVectorStore, *, batch_size: int = 512, show_progress: bool = False
) -> int:
    """Copy every record of ``source`` into ``target`` (vectors as stored: nothing is re-encoded), binding
    ``target`` to ``source``'s encoder first; an id already in ``target`` is a ``DuplicateIdError``. Returns
    the number of records copied. ``source`` needs a ``records()`` iterator (both built-in stores have one).

    A copy of more than one batch into a store with a bulk-load protocol (``drop_index()`` /
    ``create_index()``: the Postgres store) runs inside it: the target's index is built, and its codec
    trained, once on the whole copy (even below its ``train_tokens``) rather than grown record by record;
    when the copy fails, the index is rebuilt for what was copied."""
    from tqdm.auto import tqdm

    records = getattr(source, "records", None)
    if records is None:
        msg = f"{type(source).__name__} cannot list its records"
        raise InvalidInputError(msg)
    if source.encoder is not None:
        target.bind_encoder(source.encoder)
    total = len(source)
    bulk = total > batch_size and callable(getattr(target, "drop_index", None))
    copied = 0
    batch = []
    if bulk:
        target.drop_index()  # type: ignore[attr-defined]
    try:
        with tqdm(total=total, desc="copy records", unit="rec", disable=not show_progress) as bar:
            for record in records():
                batch.append(record)
                if len(batch) == batch_size:
                    target.add(batch)
                    copied += len(batch)
                    bar.update(len(batch))
                    batch = []
            if batch:
                target.add(batch)
                copied += len(batch)
                bar.update(len(batch))
    except Exception as err:
        if bulk:  # put the index back for what was copied; the copy's own error is the one to see
            try:
                target.create_index()  # type: ignore[attr-defined]
            except Exception as rebuild:
                err.add_note(f"the target's index could not be rebuilt ({rebuild}); call create_index() on it")
        raise
    if bulk:
        target.create_index()  # type: ignore[attr-defined]
    return copied


register_store(
    "memory",
    "ragplug.retrievers.late_interaction.stores.memory:InMemoryMultiVectorStore",
    folder_format="ragplug.multivector",
)
register_store("postgres", "ragplug.retrievers.late_interaction.stores.postgres:PgVectorStore")
