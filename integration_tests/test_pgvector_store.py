"""PgVectorStore against a real (embedded) PostgreSQL: processes, faults, connections, bad targets."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import textwrap
import threading
import uuid
from pathlib import Path

import numpy as np
import psycopg
import pytest

from ragplug.errors import InvalidInputError, StoreError
from ragplug.retrievers.late_interaction import Record

pytestmark = pytest.mark.integration

from ragplug.retrievers.late_interaction.stores.postgres import PgSearchOptions, PgVectorStore  # noqa: E402
from ragplug.retrievers.late_interaction.stores.postgres.schema import MIN_PGVECTOR, _version  # noqa: E402

DIM = 16
ROOT = Path(__file__).resolve().parents[1]


def _unit(rng: np.random.Generator, n: int, dim: int = DIM) -> np.ndarray:
    x = rng.standard_normal((n, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _errors_in_threads(work, n: int, timeout: float = 120) -> list[BaseException]:
    """Run ``work(i)`` for i < n in n threads at once; the exceptions they raised."""
    errors: list[BaseException] = []

    def run(i: int) -> None:
        try:
            work(i)
        except BaseException as err:  # collected for the caller to assert on
            errors.append(err)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout)
    return errors


def _collection() -> str:
    return f"t-{uuid.uuid4().hex[:10]}"


# A writer process: adds `n` records under its own prefix, one small batch at a time, plus one shared item
# it upserts each round (the item's chunks must always come from one single upsert).
_WRITER = textwrap.dedent(
    """
    import sys, numpy as np
    from ragplug.retrievers.late_interaction import Record
    from ragplug.retrievers.late_interaction.stores.postgres import PgVectorStore
    dsn, collection, prefix, rounds = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
    store = PgVectorStore(dsn, collection=collection)
    rng = np.random.default_rng(abs(hash(prefix)) % 1000)
    def unit(n):
        x = rng.standard_normal((n, 16)).astype(np.float32)
        return x / np.linalg.norm(x, axis=1, keepdims=True)
    for r in range(rounds):
        store.add([Record(f"{prefix}-{r}-{j}", unit(3), {"by": prefix}) for j in range(4)])
        n = 1 + r % 3
        store.upsert([Record(f"shared#{j}", unit(2), {"by": prefix, "n": n}, parent_id="shared") for j in range(n)])
    print("done", flush=True)
    """
)

# A reader process: reads the collection repeatedly and reports what it saw as JSON lines.
_READER = textwrap.dedent(
    """
    import json, sys, time
    from ragplug.retrievers.late_interaction.stores.postgres import PgVectorStore
    dsn, collection, seconds = sys.argv[1], sys.argv[2], float(sys.argv[3])
    store = PgVectorStore(dsn, collection=collection)
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        try:
            chunks = store.get(["shared"])
        except KeyError:
            chunks = []
        print(json.dumps({"count": len(store), "shared": [(r.id, r.metadata) for r in chunks]}), flush=True)
        time.sleep(0.02)
    """
)


def _python(script: str, *args: str) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.Popen(
        [sys.executable, "-c", script, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env
    )


def test_two_writer_processes_lose_nothing_and_a_third_sees_only_committed_states(postgres_dsn: str) -> None:
    collection = _collection()
    store = PgVectorStore(postgres_dsn, collection=collection)
    store.add([Record("seed", _unit(np.random.default_rng(0), 2))])  # the collection exists before they start
    reader = _python(_READER, postgres_dsn, collection, "6")
    writers = [_python(_WRITER, postgres_dsn, collection, prefix, "12") for prefix in ("a", "b")]
    for writer in writers:
        out, err = writer.communicate(timeout=120)
        assert writer.returncode == 0 and "done" in out, err
    out, err = reader.communicate(timeout=120)
    assert reader.returncode == 0, err
    ids = set(store.ids())
    assert {f"{p}-{r}-{j}" for p in "ab" for r in range(12) for j in range(4)} <= ids  # nothing lost
    for line in out.splitlines():
        seen = json.loads(line)
        shared = seen["shared"]
        if shared:  # every state the reader saw is one upsert's complete set of chunks
            writers_seen = {m["by"] for _, m in shared}
            assert len(writers_seen) == 1 and len(shared) == shared[0][1]["n"], shared
            assert [i for i, _ in shared] == [f"shared#{j}" for j in range(len(shared))]
        assert seen["count"] >= 1


def test_a_connection_lost_mid_write_rolls_the_whole_batch_back(postgres_dsn: str) -> None:
    store = PgVectorStore(postgres_dsn, collection=_collection())
    rng = np.random.default_rng(1)
    store.add([Record("before", _unit(rng, 2))])
    killer = psycopg.connect(postgres_dsn, autocommit=True)
    from ragplug.retrievers.late_interaction.stores.postgres import steps

    real = steps._execute

    def terminate_on_copy(cur, step):  # the backend dies after the old rows went and before the new arrive
        if isinstance(step, steps.Copy):
            pid = cur.connection.info.backend_pid
            killer.execute("SELECT pg_terminate_backend(%s)", [pid])
        return real(cur, step)

    steps._execute = terminate_on_copy  # type: ignore[assignment]
    try:
        with pytest.raises(StoreError, match="rolled back"):
            store.upsert(
                [Record("before", _unit(rng, 1), {"v": 2}), *[Record(f"n{i}", _unit(rng, 2)) for i in range(50)]]
            )
    finally:
        steps._execute = real  # type: ignore[assignment]
        killer.close()
    assert store.ids() == ["before"] and store.get(["before"])[0].metadata == {}  # old row kept, no new row


def test_unreachable_server_and_bad_targets_are_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(StoreError, match="cannot connect") as caught:
        len(PgVectorStore("postgresql://ragplug:secret@127.0.0.1:9/nowhere?connect_timeout=1", collection="x"))
    assert "secret" not in str(caught.value)
    with pytest.raises(InvalidInputError, match="neither a postgresql"):
        PgVectorStore("just-a-name")
    with pytest.raises(InvalidInputError, match="either connection or embedded"):
        PgVectorStore("postgresql://x", embedded=tmp_path)
    with pytest.raises(InvalidInputError, match="connection must be"):
        PgVectorStore(42)


def test_a_database_without_pgvector_and_a_role_that_may_not_enable_it(postgres_dsn: str) -> None:
    name = f"nopgv_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(postgres_dsn, autocommit=True) as admin:
        admin.execute(f'CREATE ROLE "{name}" LOGIN')  # test setup with a generated name
        admin.execute(f'CREATE DATABASE "{name}" OWNER postgres')
        admin.execute(f'REVOKE CREATE ON DATABASE "{name}" FROM PUBLIC')
    dsn = postgres_dsn.replace("postgres:@", f"{name}:@").replace("/postgres?", f"/{name}?")
    with pytest.raises(StoreError, match="may not enable it"):
        len(PgVectorStore(dsn, collection="x"))


def test_a_too_old_pgvector_is_named() -> None:
    """The check's own steps, answered as a server with pgvector 0.6.2 (pgserver's) installed would."""
    from ragplug.retrievers.late_interaction.stores.postgres.schema import check_pgvector

    def answered(version: str) -> str:
        op = check_pgvector()
        step = next(op)
        try:
            while True:
                step = op.send((version,) if step.fetch == "one" else None)
        except StopIteration as done:
            return str(done.value)

    with pytest.raises(StoreError, match=r"pgvector 0\.6\.2 is too old.*halfvec.*iterative index scans"):
        answered("0.6.2")
    assert answered("0.8.5") == "0.8.5" and answered("0.10.0") == "0.10.0"
    assert _version("0.6.2") < MIN_PGVECTOR


def test_a_collection_dropped_under_a_live_store(postgres_dsn: str) -> None:
    collection = _collection()
    store = PgVectorStore(postgres_dsn, collection=collection)
    store.add([Record("a", _unit(np.random.default_rng(2), 2))])
    PgVectorStore(postgres_dsn, collection=collection).drop()  # another client drops it
    with pytest.raises(StoreError, match="was dropped"):
        store.search(_unit(np.random.default_rng(3), 2), k=1)
    with pytest.raises(StoreError, match="was dropped"):
        len(store)


def test_connections_and_pools_the_caller_owns(postgres_dsn: str) -> None:
    from psycopg_pool import AsyncConnectionPool, ConnectionPool

    collection = _collection()
    rng = np.random.default_rng(4)
    with psycopg.connect(postgres_dsn) as conn:
        store = PgVectorStore(conn, collection=collection)
        store.add([Record("a", _unit(rng, 2))])
        store.close()
        assert not conn.closed  # the caller's connection stays open
    with ConnectionPool(postgres_dsn, min_size=1, max_size=2) as pool:
        assert PgVectorStore(pool, collection=collection).ids() == ["a"]

    async def run() -> None:
        aconn = await psycopg.AsyncConnection.connect(postgres_dsn)
        store = PgVectorStore(aconn, collection=collection)
        await store.aadd([Record("b", _unit(rng, 2))])
        hits = await store.asearch_batch([_unit(rng, 2)], k=5)
        assert {h.id for h in hits[0]} == {"a", "b"}
        with pytest.raises(InvalidInputError, match="async methods"):
            store.ids()
        await aconn.close()
        async with AsyncConnectionPool(postgres_dsn, min_size=1, max_size=2) as apool:
            assert [r.id for r in await PgVectorStore(apool, collection=collection).aget(["b"])] == ["b"]

    asyncio.run(run())


def test_a_dsn_store_serves_async_callers_with_its_own_pool(postgres_dsn: str) -> None:
    store = PgVectorStore(postgres_dsn, collection=_collection())
    rng = np.random.default_rng(5)

    async def run() -> list[list[str]]:
        await store.aadd([Record(f"d{i}", _unit(rng, 2), {"i": i}) for i in range(20)])
        results = await asyncio.gather(*(store.asearch_batch([_unit(rng, 2)], k=3) for _ in range(8)))
        await store.aclose()
        return [[h.id for h in r[0]] for r in results]

    assert all(len(ids) == 3 for ids in asyncio.run(run()))
    assert len(store) == 20


def test_exact_first_stage_and_the_index_agree_on_clustered_data(postgres_dsn: str) -> None:
    store = PgVectorStore(postgres_dsn, collection=_collection())
    rng = np.random.default_rng(6)
    centers = _unit(rng, 20)
    records = []
    for i in range(400):
        center = centers[i % 20]
        tokens = center + 0.3 * rng.standard_normal((6, DIM)).astype(np.float32)
        records.append(Record(f"d{i}", tokens / np.linalg.norm(tokens, axis=1, keepdims=True), {"c": i % 20}))
    store.add(records)
    query = (centers[7] + 0.2 * rng.standard_normal((4, DIM))).astype(np.float32)
    exact = store.search(query, k=10, options=PgSearchOptions(exact=True, n_candidates=400))
    approx = store.search(query, k=10)
    assert {h.metadata["c"] for h in exact} == {7}
    assert len({h.id for h in approx} & {h.id for h in exact}) >= 8


def test_concurrent_first_use_from_threads(postgres_dsn: str) -> None:
    """Schema creation and the collection's first write race safely."""
    collection = _collection()

    def write(n: int) -> None:
        PgVectorStore(postgres_dsn, collection=collection).add([Record(f"t{n}", _unit(np.random.default_rng(n), 2))])

    assert _errors_in_threads(write, 4) == []
    assert len(PgVectorStore(postgres_dsn, collection=collection)) == 4


def test_first_writes_to_new_collections_and_concurrent_binds_do_not_deadlock(postgres_dsn: str) -> None:
    from ragplug.retrievers.late_interaction import EncoderIdentity

    shared = _collection()
    PgVectorStore(postgres_dsn, collection=shared).add([Record("seed", _unit(np.random.default_rng(7), 2))])

    def work(n: int) -> None:
        PgVectorStore(postgres_dsn, collection=_collection()).add([Record("a", _unit(np.random.default_rng(n), 2))])
        PgVectorStore(postgres_dsn, collection=shared).bind_encoder(EncoderIdentity("tiny", DIM, "abc"))

    assert _errors_in_threads(work, 6) == []


def test_a_failed_first_write_leaves_an_empty_store_not_a_dropped_one(postgres_dsn: str) -> None:
    store = PgVectorStore(postgres_dsn, collection=_collection())
    rng = np.random.default_rng(8)
    with pytest.raises(InvalidInputError):
        store.add([Record("big", np.full((1, DIM), 1e6, np.float32))])  # past fp16: refused, nothing stored
    assert len(store) == 0 and store.search(_unit(rng, 2), k=1) == []


def test_an_async_only_store_works_under_an_index(postgres_dsn: str, stanford_encoder) -> None:
    from ragplug.retrievers.late_interaction import LateInteractionIndex

    async def run() -> list[str]:
        aconn = await psycopg.AsyncConnection.connect(postgres_dsn)
        index = LateInteractionIndex(stanford_encoder, PgVectorStore(aconn, collection=_collection()))
        await index.aadd(["marley was dead", "tiny tim"], ids=["m", "t"])
        hits = await index.asearch("marley was dead", k=1)
        await aconn.close()
        return [h.id for h in hits]

    assert asyncio.run(run()) == ["m"]
