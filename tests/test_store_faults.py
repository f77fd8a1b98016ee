"""Fault tests of the saved store: hostile manifests, real processes killed mid-save, readers during saves,
a full disk, orphaned files. Each uses real child processes or a real filesystem limit, bounded in time."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
import uuid
from pathlib import Path

import numpy as np
import pytest

from ragplug.errors import EncoderMismatchError, StoreCorruptedError, StoreError
from ragplug.retrievers.late_interaction import InMemoryMultiVectorStore, Record

DIM = 16
ROOT = Path(__file__).resolve().parents[1]

# A child process: builds a store of ``n`` records (deterministic) and saves it to a folder, in a loop.
# Each save alternates between two states (n and n + 1 records), so a reader can tell which one it saw.
_SAVER = textwrap.dedent(
    """
    import resource, signal, sys, numpy as np
    from ragplug.retrievers.late_interaction import InMemoryMultiVectorStore, Record
    folder, n, rounds, fsize = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
    rng = np.random.default_rng(0)
    store = InMemoryMultiVectorStore()
    store.add([Record(f"d{i}", rng.standard_normal((8, 16)).astype(np.float32), {"i": i}) for i in range(n)])
    extra = Record("extra", rng.standard_normal((8, 16)).astype(np.float32))
    if fsize:  # a filesystem limit: writes past it fail with EFBIG, as on a full disk
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (fsize, fsize))
    print("ready", flush=True)
    for r in range(rounds):
        if r % 2:
            store.add([extra])
        elif "extra" in store:
            store.delete(["extra"])
        try:
            store.save(folder)
        except Exception as err:
            print(type(err).__module__, type(err).__name__, err, flush=True)
            sys.exit(3)
    print("done", flush=True)
    """
)


def _saver(folder: Path, n: int, rounds: int, fsize: int = 0) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.Popen(
        [sys.executable, "-c", _SAVER, str(folder), str(n), str(rounds), str(fsize)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )


def _store(n: int = 40, seed: int = 0) -> InMemoryMultiVectorStore:
    rng = np.random.default_rng(seed)
    store = InMemoryMultiVectorStore()
    store.add([Record(f"d{i}", rng.standard_normal((8, DIM)).astype(np.float32), {"i": i}, f"t{i}") for i in range(n)])
    return store


def _data_files(folder: Path) -> list[str]:
    """Everything in the folder but the manifest, the lock files and the record of verified checksums."""
    own = {"manifest.json", ".ragplug-verified.json"}
    return sorted(p.name for p in folder.iterdir() if not p.name.endswith(".lock") and p.name not in own)


def _rewrite_manifest(folder: Path, **changes: object) -> None:
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest.update(changes)
    (folder / "manifest.json").write_text(json.dumps(manifest))


# -- hostile manifests ------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["../victim.txt", "/etc/hostname", "manifest.json", "sub/vectors-0123456789ab.json"])
def test_a_manifest_may_only_name_data_files_inside_its_folder(tmp_path: Path, name: str) -> None:
    victim = tmp_path / "victim.txt"
    victim.write_text("keep me")
    folder = tmp_path / "idx"
    _store().save(folder)
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["files"]["records"] = name
    (folder / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(StoreCorruptedError, match="not a data file"):
        InMemoryMultiVectorStore.load(folder)
    _store(41).save(folder)  # a save over the hostile manifest deletes nothing it names
    assert victim.read_text() == "keep me"
    assert len(InMemoryMultiVectorStore.load(folder)) == 41


def test_saving_over_a_corrupt_manifest_replaces_it_without_orphans(tmp_path: Path) -> None:
    folder = tmp_path / "idx"
    _store().save(folder)
    (folder / "manifest.json").write_text("{not json")
    for n in (41, 42, 43):
        _store(n).save(folder)
        assert len(_data_files(folder)) == 2  # vectors + records of the last save only
    assert len(InMemoryMultiVectorStore.load(folder)) == 43


def test_save_onto_an_existing_file_is_a_clear_error(tmp_path: Path) -> None:
    file = tmp_path / "notes.txt"
    file.write_text("mine")
    with pytest.raises(StoreError, match="existing file, not a folder"):
        _store().save(file)
    assert file.read_text() == "mine"


def test_unrelated_files_in_the_folder_are_left_alone(tmp_path: Path) -> None:
    folder = tmp_path / "idx"
    folder.mkdir()
    for name in ("notes.txt", "vectors-final.safetensors", "README.md"):
        (folder / name).write_text("user file")
    _store().save(folder)
    _store(41).save(folder)
    assert all((folder / name).read_text() == "user file" for name in ("notes.txt", "vectors-final.safetensors"))


# -- faults in real processes -----------------------------------------------------------------------
def test_sigkill_during_saves_never_breaks_the_store_and_the_next_save_removes_the_leftovers(tmp_path: Path) -> None:
    folder = tmp_path / "idx"
    _store(2000).save(folder)
    rng = np.random.default_rng(1)
    for _ in range(6):
        child = _saver(folder, 2000, rounds=1000)
        assert child.stdout is not None and child.stdout.readline().strip() == "ready"
        time.sleep(float(rng.uniform(0.0, 0.4)))
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=30)
        loaded = InMemoryMultiVectorStore.load(folder)  # the old state or a complete new one
        assert len(loaded) in (2000, 2001)
        assert loaded.search(np.ones((1, DIM), np.float32), k=3)
    _store(2000).save(folder)
    assert len(_data_files(folder)) == 2, _data_files(folder)  # no orphans of the killed saves
    assert len(InMemoryMultiVectorStore.load(folder)) == 2000


def test_a_reader_sees_the_old_or_the_new_state_while_another_process_saves(tmp_path: Path) -> None:
    folder = tmp_path / "idx"
    _store(2000).save(folder)
    child = _saver(folder, 2000, rounds=150)
    assert child.stdout is not None and child.stdout.readline().strip() == "ready"
    seen: set[int] = set()
    loads = 0
    deadline = time.monotonic() + 60
    while child.poll() is None and time.monotonic() < deadline:
        seen.add(len(InMemoryMultiVectorStore.load(folder)))  # never an error
        loads += 1
    out, err = child.communicate(timeout=60)
    assert child.returncode == 0, out + err
    assert loads >= 10 and seen <= {2000, 2001}
    assert len(_data_files(folder)) == 2


def test_concurrent_saves_from_two_processes_leave_one_consistent_store(tmp_path: Path) -> None:
    folder = tmp_path / "idx"
    children = [_saver(folder, 500, rounds=20), _saver(folder, 700, rounds=20)]
    for child in children:
        out, err = child.communicate(timeout=120)
        assert child.returncode == 0, out + err
    assert len(InMemoryMultiVectorStore.load(folder)) in (500, 501, 700, 701)
    assert len(_data_files(folder)) == 2


def test_a_save_that_runs_out_of_space_is_a_store_error_and_leaves_nothing(tmp_path: Path) -> None:
    folder = tmp_path / "idx"
    _store(40).save(folder)
    before = _data_files(folder)
    child = _saver(folder, 3000, rounds=1, fsize=200_000)  # the vectors file alone needs ~1.5 MB
    out, err = child.communicate(timeout=60)
    assert child.returncode == 3, out + err
    assert "ragplug.errors StoreError" in out and "cannot save the store" in out
    assert _data_files(folder) == before  # no partial file left behind
    assert len(InMemoryMultiVectorStore.load(folder)) == 40


def _mount_tmpfs(where: Path, size: str) -> bool:
    where.mkdir()
    if shutil.which("mount") is None or os.geteuid() != 0:
        return False
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)], capture_output=True)
    return done.returncode == 0


def test_a_save_on_a_really_full_filesystem(tmp_path: Path) -> None:
    disk = tmp_path / "disk"
    if not _mount_tmpfs(disk, "1m"):
        pytest.skip("this machine does not allow mounting a small tmpfs (the RLIMIT_FSIZE test covers the fault)")
    try:
        folder = disk / "idx"
        _store(40).save(folder)
        before = _data_files(folder)
        with pytest.raises(StoreError, match="cannot save the store"):
            _store(3000).save(folder)
        assert _data_files(folder) == before
        assert not [p for p in folder.iterdir() if p.name.endswith(".tmp")]
        assert len(InMemoryMultiVectorStore.load(folder)) == 40
    finally:
        subprocess.run(["umount", str(disk)], check=False)


# -- every manifest field checked ---------------------------------------------------------------------
@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("dim", "16"),
        ("dim", -1),
        ("dim", 8),
        ("n_records", 1.5),
        ("n_tokens", None),
        ("mode", "fastest"),
        ("approximate", {"n_probe": "many"}),
        ("approximate", {"unknown": 1}),
        ("approximate", [1, 2]),
        ("approximate_min_tokens", True),
        ("encoder", {"name": "x"}),
        ("encoder", "minilm"),
        ("encoder", {"name": "x", "dim": 999, "fingerprint": ""}),
        ("files", ["vectors"]),
        ("sha256", {"vectors": "abc"}),
    ],
)
def test_bad_manifest_fields_are_corruption_named_in_the_error(tmp_path: Path, field: str, value: object) -> None:
    folder = tmp_path / "idx"
    _store().save(folder)
    _rewrite_manifest(folder, **{field: value})
    with pytest.raises(StoreCorruptedError) as caught:
        InMemoryMultiVectorStore.load(folder)
    assert field in str(caught.value) or "inconsistent" in str(caught.value) or "encoder" in str(caught.value)


def test_fuzzed_manifests_raise_only_store_errors(tmp_path: Path) -> None:
    hypothesis = pytest.importorskip("hypothesis")
    st = hypothesis.strategies
    folder = tmp_path / "idx"
    _store().save(folder)
    original = json.loads((folder / "manifest.json").read_text())
    json_values = st.recursive(
        st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
        lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
        max_leaves=8,
    )
    fields = st.sampled_from([*sorted(original), "extra"])

    @hypothesis.settings(max_examples=150, deadline=None, database=None)
    @hypothesis.given(changes=st.dictionaries(fields, json_values, min_size=1, max_size=3))
    def check(changes: dict[str, object]) -> None:
        (folder / "manifest.json").write_text(json.dumps({**original, **changes}))
        with contextlib.suppress(StoreError, EncoderMismatchError):
            InMemoryMultiVectorStore.load(folder)

    check()


def test_a_truncated_manifest_or_data_file_never_escapes_as_a_raw_error(tmp_path: Path) -> None:
    folder = tmp_path / "idx"
    _store().save(folder)
    data = {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file()}
    rng = np.random.default_rng(0)
    for name, blob in data.items():
        if name.startswith(".ragplug-"):
            continue
        for cut in {0, 1, 7, 9, len(blob) // 2, int(rng.integers(1, max(2, len(blob))))}:
            (folder / name).write_bytes(blob[:cut])
            with pytest.raises(StoreError):
                InMemoryMultiVectorStore.load(folder)
        (folder / name).write_bytes(blob)
    assert len(InMemoryMultiVectorStore.load(folder)) == 40


def test_leftovers_of_crashed_saves_are_removed_by_the_next_save(tmp_path: Path) -> None:
    """A leftover data file of a crashed save is removed by the next save, whatever its suffix."""
    folder = tmp_path / "idx"
    _store().save(folder)
    leftover = folder / f"vectors-{uuid.uuid4().hex[:12]}.safetensors"
    leftover.write_bytes(b"partial")
    (folder / f".records-{uuid.uuid4().hex[:12]}.json.abc123_x.tmp").write_bytes(b"partial")
    (folder / ".tmpAb3xYz").write_bytes(b"partial")  # safetensors' own temp file, from earlier versions
    (folder / ".ragplug-staging-0123456789ab").mkdir()
    (folder / ".ragplug-staging-0123456789ab" / "vectors-0123456789ab.safetensors").write_bytes(b"partial")
    _store(41).save(folder)
    assert len(_data_files(folder)) == 2 and not leftover.exists()
    assert {p.name for p in folder.iterdir() if p.name.startswith(".")} == {".ragplug-read.lock", ".ragplug-write.lock"}


def test_an_interrupt_after_the_manifest_swap_keeps_the_new_state(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import ragplug.retrievers.late_interaction.stores.folder as folder_mod

    folder = tmp_path / "idx"
    _store(40).save(folder)

    def interrupted(*args: object, **kwargs: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(folder_mod, "_collect_garbage", interrupted)
    with pytest.raises(KeyboardInterrupt):
        _store(41).save(folder)
    assert len(InMemoryMultiVectorStore.load(folder)) == 41


def test_lock_files_of_another_user_or_a_bad_format_are_clear_errors(tmp_path: Path) -> None:
    from ragplug.retrievers.late_interaction import load_store

    folder = tmp_path / "idx"
    _store(40).save(folder)
    _rewrite_manifest(folder, format=["not", "a", "name"])
    with pytest.raises(StoreCorruptedError, match="no registered store reads"):
        load_store(folder)
    other = tmp_path / "other"
    _store(40).save(other)
    (other / ".ragplug-write.lock").unlink()
    (other / ".ragplug-write.lock").symlink_to("/nonexistent-ragplug/lock")  # a lock file that cannot be opened
    with pytest.raises(StoreError, match="cannot open the lock file"):
        _store(41).save(other)
    assert len(InMemoryMultiVectorStore.load(other)) == 40
