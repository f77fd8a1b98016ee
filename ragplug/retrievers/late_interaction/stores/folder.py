"""The on-disk folder format of a multi-vector store: a manifest and checksummed data files.

A saved store is a folder holding ``manifest.json`` and data files named ``<name>-<12 hex>.<ext>``
(``vectors-….safetensors``, ``records-….json``, ``ivf-….safetensors``). The manifest names the files
it belongs to with their SHA-256, plus the store's own header fields (format, version, dimension, …).

Writing (:func:`write_folder`) writes each new data file in a staging folder inside the store folder,
fsyncs it and renames it into place, then replaces ``manifest.json`` the same way: a crash at any point
leaves the previous manifest and its files intact. The files of the previous state are then deleted, with
every data file that no manifest names and every staging folder (leftovers of crashed saves), so a
folder never accumulates orphans. A failed write
(disk full, say) removes what it wrote and raises :class:`~ragplug.errors.StoreError`.

Reading (:func:`read_folder`) refuses a manifest that names anything but plain data files inside the
folder (no ``../``, no absolute paths, not the manifest itself), and verifies every file's checksum as it
reads it. Large files may be memory-mapped instead of read: their checksum is verified at the first load
and recorded in ``.ragplug-verified.json`` with the file's size, modification time and inode; a later
load whose file still has that stamp maps it without hashing it again (data files are never rewritten in
place: a save writes new files under new names).

Concurrency, across threads and processes, with two ``flock`` lock files in the folder:

- ``.ragplug-write.lock``: held exclusively for a whole save, so saves never interleave;
- ``.ragplug-read.lock``: readers hold it shared while they read the manifest and open the files it
  names; a save holds it exclusively only while it swaps the manifest and deletes old files. An open file
  stays readable after it is deleted, so a reader sees the old state or the new one, never a mix or an
  error. Where locks are unavailable (a read-only folder, a platform without ``fcntl``), a reader that
  finds a file gone re-reads the manifest and tries again.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import logging
import math
import os
import re
import shutil
import uuid
from collections.abc import Callable, Collection, Iterator, Mapping
from pathlib import Path
from typing import IO, Any

import numpy as np

from ragplug.errors import StoreCorruptedError, StoreError

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows: readers fall back to retrying
    fcntl = None  # type: ignore[assignment]

__all__ = ["MANIFEST", "manifest_format", "read_folder", "safetensors_views", "write_folder"]

MANIFEST = "manifest.json"
_WRITE_LOCK = ".ragplug-write.lock"
_READ_LOCK = ".ragplug-read.lock"
_NAME = re.compile(r"[a-z]{1,32}")
_DATA_FILE = re.compile(r"(?P<name>[a-z]{1,32})-[0-9a-f]{12}\.(?:safetensors|json)")
_STAGING = ".ragplug-staging-"
# temp files of earlier ragplug versions, which wrote beside the data files: ours, and safetensors' own
_OLD_TEMP_FILE = re.compile(r"\.tmp[A-Za-z0-9]{6}")
_TEMP_FILE = re.compile(
    r"\.(?:manifest\.json|ragplug-verified\.json|[a-z]{1,32}-[0-9a-f]{12}\.(?:safetensors|json))\.[A-Za-z0-9_]+\.tmp"
)
_SHA256 = re.compile(r"[0-9a-f]{64}")
_VERIFIED = ".ragplug-verified.json"
_READ_ATTEMPTS = 8

logger = logging.getLogger(__name__)


# -- writing ----------------------------------------------------------------------------------------
def write_folder(
    path: str | os.PathLike[str],
    header: Mapping[str, Any],
    *,
    tensors: Mapping[str, Mapping[str, np.ndarray[Any, Any]]],
    documents: Mapping[str, Any],
) -> None:
    """Save a store to the folder ``path``: ``tensors`` as safetensors files, ``documents`` as JSON files,
    and a manifest made of ``header`` plus the files' names and checksums (see the module docstring)."""
    from safetensors.numpy import save_file

    folder = Path(path)
    for name in [*tensors, *documents]:
        if not _NAME.fullmatch(name):  # a programming error, not user input
            msg = f"data file name {name!r} must be 1-32 lowercase letters"
            raise ValueError(msg)
    if folder.exists() and not folder.is_dir():
        msg = f"cannot save a store to {str(folder)!r}: it is an existing file, not a folder"
        raise StoreError(msg)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        msg = f"cannot create the store folder {str(folder)!r}: {err}"
        raise StoreError(msg) from err
    with _locked(folder / _WRITE_LOCK, exclusive=True, create=True):
        suffix = uuid.uuid4().hex[:12]
        staging = folder / f"{_STAGING}{suffix}"  # every file is written here first, then renamed into place
        files: dict[str, str] = {}
        checksums: dict[str, str] = {}
        committed = False
        try:
            staging.mkdir()
            for name, group in tensors.items():
                files[name] = f"{name}-{suffix}.safetensors"
                _write_atomic(staging, folder, files[name], functools.partial(save_file, dict(group)))
                checksums[name] = _sha256(folder / files[name])  # safetensors wrote it: read it back once
            for name, document in documents.items():
                blob = json.dumps(document, ensure_ascii=False, allow_nan=False).encode("utf-8")
                files[name] = f"{name}-{suffix}.json"
                _write_atomic(staging, folder, files[name], functools.partial(_write_bytes, blob))
                checksums[name] = hashlib.sha256(blob).hexdigest()
            manifest = {**header, "files": files, "sha256": checksums}
            text = json.dumps(manifest, indent=1)
            with _locked(folder / _READ_LOCK, exclusive=True, create=True):
                _write_atomic(staging, folder, MANIFEST, lambda p: Path(p).write_text(text, encoding="utf-8"))
                committed = True  # from here on the save has happened: its files must stay
                _fsync_folder(folder)
                _collect_garbage(folder, keep=set(files.values()))
        except BaseException as err:
            if committed:  # interrupted while cleaning up: the new state is in place and complete
                raise
            for fname in files.values():  # the manifest was not replaced: what this save wrote is garbage
                (folder / fname).unlink(missing_ok=True)
            shutil.rmtree(staging, ignore_errors=True)
            if isinstance(err, Exception) and not isinstance(err, StoreError):
                msg = f"cannot save the store to {str(folder)!r}: {err}"
                raise StoreError(msg) from err
            raise


def _write_bytes(blob: bytes, path: str) -> None:
    Path(path).write_bytes(blob)


def _write_atomic(staging: Path, folder: Path, name: str, write: Callable[[str], Any]) -> None:
    """Write ``staging/name``, fsync it, then rename it to ``folder/name`` (the same filesystem)."""
    tmp = staging / name
    write(str(tmp))
    os.chmod(tmp, 0o644)
    with open(tmp, "rb") as fh:
        os.fsync(fh.fileno())
    os.replace(tmp, folder / name)


def _fsync_folder(folder: Path) -> None:
    """Make the renames durable (POSIX; a no-op where folders cannot be opened)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # pragma: no cover - Windows
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover - some filesystems refuse fsync on folders
        pass
    finally:
        os.close(fd)


def _collect_garbage(folder: Path, keep: set[str]) -> None:
    """Delete data files that the manifest does not name, and the staging folders and temp files of crashed
    saves (called with both locks held, so no other save is writing and no reader is between reading the
    manifest and opening its files). What cannot be deleted is logged and left for the next save."""
    try:
        entries = list(os.scandir(folder))
    except OSError as err:
        logger.warning("cannot list %s to remove old data files: %s", folder, err)
        return
    for entry in entries:
        name = entry.name
        try:
            if entry.is_dir(follow_symlinks=False):
                if name.startswith(_STAGING):
                    shutil.rmtree(entry.path)
            elif name not in keep and any(p.fullmatch(name) for p in (_DATA_FILE, _TEMP_FILE, _OLD_TEMP_FILE)):
                os.unlink(entry.path)
        except FileNotFoundError:
            pass
        except OSError as err:
            logger.warning("cannot remove the old data file %s: %s", entry.path, err)


def _sha256(file: Path) -> str:
    digest = hashlib.sha256()
    with file.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


# -- locking ----------------------------------------------------------------------------------------
@contextlib.contextmanager
def _locked(file: Path, *, exclusive: bool, create: bool) -> Iterator[bool]:
    """Hold an ``flock`` on ``file``; yields False (holding nothing) where locking is not possible."""
    if fcntl is None:  # pragma: no cover - Windows
        yield False
        return
    try:
        fd = os.open(file, os.O_RDWR | os.O_CREAT, 0o644) if create else os.open(file, os.O_RDONLY)
    except OSError as err:
        if not create:  # a reader that cannot lock (read-only folder, another user's lock file) retries instead
            yield False
            return
        try:
            fd = os.open(file, os.O_RDONLY)  # someone else's lock file: a shared or exclusive flock still works
        except OSError:
            msg = f"cannot open the lock file {file}: {err}"
            raise StoreError(msg) from err
    try:
        fcntl.flock(fd, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
        yield True
    finally:
        os.close(fd)  # releases the lock


# -- reading ----------------------------------------------------------------------------------------
def read_folder(
    path: str | os.PathLike[str], *, mapped: Collection[str] = (), reverify: bool = False
) -> tuple[dict[str, Any], dict[str, np.ndarray[Any, Any]]]:
    """The manifest of the store in ``path`` and the verified bytes of each data file it names, by name.

    Files named in ``mapped`` come back as read-only memory maps, verified once per file (see the module
    docstring; ``reverify`` hashes them again).

    Raises :class:`~ragplug.errors.StoreError` when the folder holds no store and
    :class:`~ragplug.errors.StoreCorruptedError` when its manifest or a data file is damaged.
    """
    folder = Path(path)
    previous: dict[str, Any] | None = None
    missing: str | None = None
    for _ in range(_READ_ATTEMPTS):
        missing = None
        handles: dict[str, IO[bytes]] = {}
        try:
            with _locked(folder / _READ_LOCK, exclusive=False, create=False):
                manifest = _read_manifest(folder)
                files, checksums = _data_files(folder, manifest)
                for name, fname in files.items():  # once open, a file stays readable if a save deletes it
                    try:
                        handles[name] = (folder / fname).open("rb")
                    except FileNotFoundError:
                        missing = fname
                        break
            if missing is None:
                return manifest, {
                    name: _map_verified(fh, checksums[name], folder, reverify)
                    if name in mapped
                    else _read_verified(fh, checksums[name], folder)
                    for name, fh in handles.items()
                }
        finally:
            for fh in handles.values():
                fh.close()
        if manifest == previous:  # the same manifest twice, and still a file is gone: not a concurrent save
            break
        previous = manifest
    msg = f"{folder}: data file {missing} named by the manifest is missing"
    raise StoreCorruptedError(msg)


def manifest_format(path: str | os.PathLike[str]) -> Any:
    """The ``format`` field of the manifest in ``path`` (which store wrote it)."""
    return _read_manifest(Path(path)).get("format")


def _read_manifest(folder: Path) -> dict[str, Any]:
    file = folder / MANIFEST
    if not file.is_file():
        msg = f"{folder} holds no ragplug store ({MANIFEST} not found)"
        raise StoreError(msg)
    try:
        manifest = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError) as err:
        msg = f"{file} is truncated or corrupted: {err}"
        raise StoreCorruptedError(msg) from err
    if not isinstance(manifest, dict):
        msg = f"{file} is not a JSON object"
        raise StoreCorruptedError(msg)
    return manifest


def _data_files(folder: Path, manifest: Mapping[str, Any]) -> tuple[dict[str, str], dict[str, str]]:
    """The manifest's ``files`` and ``sha256``, refused unless each names a plain data file of this folder."""
    files, checksums = manifest.get("files"), manifest.get("sha256")
    if not isinstance(files, dict) or not isinstance(checksums, dict):
        msg = f"{folder / MANIFEST}: 'files' and 'sha256' must be objects, got {files!r} and {checksums!r}"
        raise StoreCorruptedError(msg)
    for name, fname in files.items():
        match = _DATA_FILE.fullmatch(fname) if isinstance(fname, str) else None
        if match is None or match["name"] != name:
            msg = f"{folder / MANIFEST}: file {name!r} is named {fname!r}, not a data file '{name}-<12 hex>.<ext>'"
            raise StoreCorruptedError(msg)
        digest = checksums.get(name)
        if not isinstance(digest, str) or not _SHA256.fullmatch(digest):
            msg = f"{folder / MANIFEST}: 'sha256' of file {name!r} is {digest!r}, not 64 hex digits"
            raise StoreCorruptedError(msg)
    return files, checksums


def _read_verified(fh: IO[bytes], expected: str, folder: Path) -> np.ndarray[Any, Any]:
    """A data file's bytes, read once and hashed as they are read; a checksum mismatch is corruption."""
    size = os.fstat(fh.fileno()).st_size
    buffer = np.empty(size, dtype=np.uint8)  # not zero-filled: every byte is read into it
    view = buffer.data  # a writable memoryview over the array
    digest = hashlib.sha256()
    done = 0
    while done < size:
        n = fh.readinto(view[done : done + (1 << 24)])  # type: ignore[attr-defined]
        if not n:
            break
        digest.update(view[done : done + n])
        done += n
    if done != size or digest.hexdigest() != expected:
        msg = f"{folder}: data file {Path(fh.name).name} is truncated or corrupted (checksum mismatch)"
        raise StoreCorruptedError(msg)
    return buffer


def _map_verified(fh: IO[bytes], expected: str, folder: Path, reverify: bool) -> np.ndarray[Any, Any]:
    """A data file memory-mapped read-only, its checksum verified unless a matching stamp records it was."""
    st = os.fstat(fh.fileno())
    fname = Path(fh.name).name
    stamp = {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "ino": st.st_ino, "sha256": expected}
    record = _verified_stamps(folder)
    if reverify or record.get(fname) != stamp:
        digest = hashlib.sha256()
        fh.seek(0)
        for block in iter(lambda: fh.read(1 << 22), b""):
            digest.update(block)
        if digest.hexdigest() != expected:
            msg = f"{folder}: data file {fname} is truncated or corrupted (checksum mismatch)"
            raise StoreCorruptedError(msg)
        names = {e.name for e in os.scandir(folder)}
        _record_stamps(folder, {k: v for k, v in record.items() if k in names} | {fname: stamp})
    if not st.st_size:
        return np.empty(0, dtype=np.uint8)
    return np.memmap(fh, dtype=np.uint8, mode="r")


def _verified_stamps(folder: Path) -> dict[str, Any]:
    try:
        record = json.loads((folder / _VERIFIED).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return record if isinstance(record, dict) else {}


def _record_stamps(folder: Path, record: dict[str, Any]) -> None:
    """Best effort: a folder we cannot write to is simply verified again at the next load."""
    tmp = folder / f"{_VERIFIED}.{uuid.uuid4().hex[:12]}.tmp"
    try:
        tmp.write_text(json.dumps(record), encoding="utf-8")
        os.replace(tmp, folder / _VERIFIED)
    except OSError as err:
        tmp.unlink(missing_ok=True)
        logger.debug("cannot record verified checksums in %s: %s", folder, err)


_SAFETENSORS_DTYPES = {
    "F16": np.float16,
    "F32": np.float32,
    "F64": np.float64,
    "U8": np.uint8,
    "U16": np.uint16,
    "I32": np.int32,
    "I64": np.int64,
}
_MAX_HEADER = 100_000_000  # as in safetensors itself


def safetensors_views(buffer: np.ndarray[Any, Any]) -> dict[str, np.ndarray[Any, Any]]:
    """The tensors of a safetensors file already in memory (and verified), as arrays over its bytes.

    safetensors' own numpy loader copies every tensor (0.4 GB/s on the benchmark VM: 6.9 s for SciFact's
    2.6 GB of vectors); the format is a little-endian u64 header length, a JSON header naming each
    tensor's dtype, shape and byte range, then the data, so views need no copy. Files are still written
    with ``safetensors.numpy.save_file``. Raises ``ValueError`` (or ``KeyError``/``TypeError``) when the
    header does not describe the bytes.
    """
    header_len = int.from_bytes(buffer[:8].tobytes(), "little")
    if len(buffer) < 8 or not 0 < header_len <= min(len(buffer) - 8, _MAX_HEADER):
        msg = f"header length {header_len} does not fit a {len(buffer)}-byte file"
        raise ValueError(msg)
    header = json.loads(buffer[8 : 8 + header_len].tobytes())
    if not isinstance(header, dict):
        msg = "the header is not a JSON object"
        raise ValueError(msg)
    base, data_size = 8 + header_len, len(buffer) - 8 - header_len
    tensors: dict[str, np.ndarray[Any, Any]] = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        dtype = np.dtype(_SAFETENSORS_DTYPES[info["dtype"]]).newbyteorder("<")
        begin, end = info["data_offsets"]
        shape = info["shape"]
        exact_ints = all(type(x) is int for x in (begin, end, *shape))
        count = math.prod(shape) if exact_ints else -1
        if not exact_ints or min(shape, default=0) < 0 or not 0 <= begin <= end <= data_size:
            msg = f"tensor {name!r}: byte range {begin}..{end} or shape {shape} is invalid"
            raise ValueError(msg)
        if end - begin != count * dtype.itemsize:
            msg = f"tensor {name!r}: byte range {begin}..{end} does not hold shape {shape} of {info['dtype']}"
            raise ValueError(msg)
        tensors[name] = np.frombuffer(buffer, dtype=dtype, count=count, offset=base + begin).reshape(shape)
    return tensors
