"""PgVectorStore collections that keep their tokens with a codec: training, the inverted lists of centroids
(the first stage: kept through writes, merged, rebuilt), reopening, re-training, upgrading version 1 and 2
tables, damaged codec rows."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
import textwrap
import uuid
from pathlib import Path

import numpy as np
import psycopg
import pytest

from ragplug.errors import StoreCorruptedError, StoreError
from ragplug.retrievers.late_interaction import CodecConfig, InMemoryMultiVectorStore, Record, copy_records

pytestmark = pytest.mark.integration

from ragplug.retrievers.late_interaction.stores.postgres import (  # noqa: E402
    PgSearchOptions,
    PgVectorStore,
    coded,
)
from ragplug.retrievers.late_interaction.stores.postgres.coded import default_codec  # noqa: E402

DIM = 32
RESIDUAL = CodecConfig(kind="residual", nbits=2, train_tokens=2000)


def _collection() -> str:
    return f"c-{uuid.uuid4().hex[:10]}"


def _corpus(n_docs: int = 600, seed: int = 0, *, common: int = 0) -> list[Record]:
    """Documents whose tokens gather around one of 30 topics (k-means has structure to find); with
    ``common``, that many of each document's last tokens gather instead around one of 4 directions every
    topic shares, as punctuation and markers do in real token matrices."""
    rng = np.random.default_rng(seed)
    topics = rng.standard_normal((30, DIM))
    shared = rng.standard_normal((4, DIM)) if common else np.zeros((0, DIM))
    out = []
    for i in range(n_docs):
        centres = np.repeat(topics[i % 30][None], 8, axis=0)
        for j in range(common):
            centres[8 - common + j] = shared[(i // 4**j) % 4]
        x = centres + 0.5 * rng.standard_normal((8, DIM))
        out.append(Record(f"d{i}", (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32), {"i": i}))
    return out


def _queries(records: list[Record], n: int = 12) -> list[np.ndarray]:
    rng = np.random.default_rng(99)
    out = []
    for r in records[:: len(records) // n][:n]:
        q = r.vectors[:4] + 0.1 * rng.standard_normal((4, DIM))
        out.append((q / np.linalg.norm(q, axis=1, keepdims=True)).astype(np.float32))
    return out


def _overlap(a: list[list[str]], b: list[list[str]]) -> float:
    return float(np.mean([len(set(x) & set(y)) / len(y) for x, y in zip(a, b, strict=True)]))


def _stored_bytes_per_token(dsn: str, collection: str) -> float:
    """What a collection's rows keep per token: token bytes plus centroid ids."""
    with psycopg.connect(dsn) as conn:
        row = conn.execute(
            "SELECT sum(length(tokens) + length(codes)) / sum(n_tokens)::float FROM ragplug_records "
            "WHERE collection = %s",
            [collection],
        ).fetchone()
    assert row is not None
    return float(row[0])


def test_a_residual_collection_trains_itself_and_finds_what_exact_search_finds(postgres_dsn: str) -> None:
    records = _corpus()
    exact = InMemoryMultiVectorStore(mode="exact")
    exact.add(records)
    queries = _queries(records)
    truth = [[h.id for h in exact.search(q, k=10)] for q in queries]

    store = PgVectorStore(postgres_dsn, collection=_collection(), codec=RESIDUAL)
    store.add(records[:200])  # 1,600 tokens: below train_tokens, kept as fp16
    assert store.codec is None
    store.add(records[200:])
    codec = store.codec
    assert codec is not None and codec.config.kind == "residual" and codec.centroids is not None
    got = [[h.id for h in store.search(q, k=10)] for q in queries]
    # the search pipeline finds what exact MaxSim over the stored (decoded) vectors finds ...
    decoded = InMemoryMultiVectorStore(mode="exact")
    decoded.add(list(store.records()))
    assert _overlap(got, [[h.id for h in decoded.search(q, k=10)] for q in queries]) >= 0.9
    # ... and 2-bit residuals lose little against float32 (topic mates are near-ties here)
    assert _overlap(got, truth) >= 0.7
    hit = store.search(queries[0], k=1)[0]
    assert hit.score == pytest.approx(exact.search(queries[0], k=1)[0].score, abs=0.3)

    # a record comes back in the encoder's space, close to what was stored
    back = store.get(["d5"])[0].vectors
    assert back.shape == (8, DIM) and float((back * records[5].vectors).sum(axis=1).mean()) > 0.9

    # another client reads the codec from the collection's row and ranks the same
    reopened = PgVectorStore(postgres_dsn, collection=store.collection)
    assert reopened.codec is not None and reopened.codec.same_as(codec)
    assert [[h.id for h in reopened.search(q, k=10)] for q in queries] == got

    # bytes kept per token: codes (2) + residual bits (32 dims x 2 bits = 8), far below fp16's 64
    assert _stored_bytes_per_token(postgres_dsn, store.collection) == pytest.approx(10.0)


@pytest.mark.parametrize("kind", ["rotated", "pq"])
def test_a_budgeted_collection_keeps_its_byte_budget_and_ranks_as_its_decoded_vectors(
    postgres_dsn: str, kind: str
) -> None:
    records = _corpus(800, common=2)
    queries = _queries(records)
    config = CodecConfig(kind=kind, token_bytes=8, train_tokens=2000)
    store = PgVectorStore(postgres_dsn, collection=_collection(), codec=config)
    store.add(records)
    codec = store.codec
    assert codec is not None and codec.config.kind == kind and codec.bytes_per_token <= 8
    decoded = InMemoryMultiVectorStore(mode="exact")
    decoded.add(list(store.records()))
    opts = PgSearchOptions(n_candidates=100, n_rescore=40)
    for q in queries:
        got, truth = store.search(q, k=10, options=opts), decoded.search(q, k=10)
        assert len({h.id for h in got} & {h.id for h in truth}) >= 8
        assert got[0].id == truth[0].id and got[0].score == pytest.approx(truth[0].score, abs=1e-4)
    reopened = PgVectorStore(postgres_dsn, collection=store.collection)
    assert reopened.codec is not None and reopened.codec.same_as(codec)
    assert _stored_bytes_per_token(postgres_dsn, store.collection) == pytest.approx(codec.bytes_per_token)


def test_a_selective_filter_still_returns_k_matches_from_the_inverted_lists(postgres_dsn: str) -> None:
    store = PgVectorStore(postgres_dsn, collection=_collection(), codec=RESIDUAL)
    records = _corpus(1000)
    for r in records:
        r.metadata["rare"] = r.metadata["i"] % 100 == 0  # 1% of the records
    store.add(records)
    assert store.codec is not None
    hits = store.search(_queries(records)[3], k=10, filter={"rare": True})
    assert len(hits) == 10 and all(h.metadata["rare"] for h in hits)
    exact = PgSearchOptions(exact=True)
    for q in _queries(records)[:4]:  # a broad filter: the candidates that pass are topped up from the ranking
        half = {"i": {"$lt": 500}}
        got, truth = store.search(q, k=10, filter=half), store.search(q, k=10, filter=half, options=exact)
        assert len(got) == 10 and all(h.metadata["i"] < 500 for h in got) and got[0].id == truth[0].id


def test_retraining_re_encodes_every_record_and_writes_go_on(postgres_dsn: str) -> None:
    store = PgVectorStore(postgres_dsn, collection=_collection(), codec=RESIDUAL)
    records = _corpus(700)
    store.add(records[:400])
    first = store.codec
    assert first is not None
    store.add(records[400:])
    assert store.train_codec()
    second = store.codec
    assert second is not None and not second.same_as(first)
    assert len(store) == 700
    query = _queries(records)[5]
    assert store.search(query, k=1)[0].id == store.search(query, k=1, options=PgSearchOptions(exact=True))[0].id
    store.delete(["d1"])
    store.upsert([Record("d2", records[3].vectors)])
    assert "d1" not in store
    assert float((store.get(["d2"])[0].vectors * records[3].vectors).sum(axis=1).mean()) > 0.9


def test_compact_reclaims_what_retraining_left_and_keeps_every_record(postgres_dsn: str) -> None:
    # a schema of its own: the records table is shared by every collection of a schema
    store = PgVectorStore(postgres_dsn, collection=_collection(), schema=f"s_{uuid.uuid4().hex[:8]}", codec=RESIDUAL)
    records = _corpus(3000)
    store.add(records)
    loaded = store.table_sizes()
    assert store.train_codec() and store.train_codec()  # two rewrites of every token matrix
    bloated = store.table_sizes()
    assert bloated["total"] > loaded["total"]
    ids = [r.id for r in records[::97]]
    before = [(r.id, r.vectors, r.metadata) for r in store.get(ids)]
    query = _queries(records)[3]
    ranked = [h.id for h in store.search(query, k=5)]
    store.compact()  # plain VACUUM: the space becomes reusable (files rarely shrink; free-space maps appear)
    compacted = store.compact(full=True)
    assert compacted["total"] < bloated["total"] and set(compacted) == {"heap", "toast", "indexes", "postings", "total"}
    after = store.get(ids)
    assert [r.id for r in after] == [b[0] for b in before]
    for record, (_, vectors, metadata) in zip(after, before, strict=True):
        assert np.array_equal(record.vectors, vectors) and record.metadata == metadata
    assert [h.id for h in store.search(query, k=5)] == ranked and len(store) == 3000
    store.add([Record("late", records[0].vectors)])  # writes go on after a full vacuum
    assert "late" in store


def test_a_memory_store_copies_into_a_residual_collection(postgres_dsn: str) -> None:
    source = InMemoryMultiVectorStore()
    records = _corpus(300)
    source.add(records)
    target = PgVectorStore(postgres_dsn, collection=_collection(), codec=RESIDUAL)
    copy_records(source, target, batch_size=50)  # six batches: one bulk load, the codec trained on all of it
    assert target.codec is not None and len(target) == 300
    query = _queries(records)[2]
    assert target.search(query, k=1)[0].id == source.search(query, k=1)[0].id
    with psycopg.connect(postgres_dsn) as conn:
        trained = conn.execute(
            "SELECT codec->>'trained_tokens', codec->>'deferred' FROM ragplug_collections WHERE name = %s",
            [target.collection],
        ).fetchone()
        indexed = conn.execute("SELECT count(*) FROM pg_indexes WHERE indexdef LIKE %s", [f"%{target.collection}%"])
        assert trained == ("2400", "false") and indexed.fetchone() == (1,)  # not 2,000: training waited


def test_float16_and_projected_codecs(postgres_dsn: str) -> None:
    records = _corpus(300)
    query = _queries(records)[1]
    for config in (CodecConfig(kind="float16"), CodecConfig(kind="float16", dim=16, train_tokens=500)):
        store = PgVectorStore(postgres_dsn, collection=_collection(), codec=config)
        store.add(records)
        assert store.codec is not None and store.codec.dim == (config.dim or DIM)
        assert store.get(["d0"])[0].vectors.shape == (8, DIM)
        assert store.search(query, k=1)[0].id == records[::25][1].id


def test_version_1_tables_are_upgraded_and_their_collections_keep_fp16(postgres_dsn: str) -> None:
    schema = f"v1_{uuid.uuid4().hex[:8]}"
    old = PgVectorStore(postgres_dsn, collection="old", schema=schema)
    old.add(_corpus(20))
    with psycopg.connect(postgres_dsn, autocommit=True) as conn:  # turn the tables back into version 1
        conn.execute(f'ALTER TABLE "{schema}".ragplug_collections DROP COLUMN codec, DROP COLUMN codec_arrays')
        conn.execute(f'ALTER TABLE "{schema}".ragplug_records DROP COLUMN codes')
        conn.execute(f'UPDATE "{schema}".ragplug_schema_version SET version = 1')
    store = PgVectorStore(postgres_dsn, collection="old", schema=schema, codec=RESIDUAL)
    assert len(store) == 20 and store.codec is None
    store.add(_corpus(400, seed=1)[20:])  # past train_tokens, but a version 1 collection keeps fp16
    assert store.codec is None and store.search(_corpus(20)[4].vectors, k=1)[0].id == "d4"
    with psycopg.connect(postgres_dsn) as conn:
        version = conn.execute(f'SELECT version FROM "{schema}".ragplug_schema_version').fetchone()
    assert version == (3,)


def test_a_damaged_codec_row_is_corruption(postgres_dsn: str) -> None:
    store = PgVectorStore(postgres_dsn, collection=_collection(), codec=RESIDUAL)
    store.add(_corpus(300))
    with psycopg.connect(postgres_dsn, autocommit=True) as conn:
        conn.execute(
            "UPDATE ragplug_collections SET codec_arrays = %s WHERE name = %s", [b"not safetensors", store.collection]
        )
    with pytest.raises(StoreCorruptedError, match="damaged"):
        PgVectorStore(postgres_dsn, collection=store.collection).search(_corpus(1)[0].vectors, k=1)


def test_a_bulk_load_trains_the_codec_once_on_the_whole_load(postgres_dsn: str) -> None:
    store = PgVectorStore(postgres_dsn, collection=_collection(), codec=RESIDUAL)
    records = _corpus(900)
    store.add(records[:10])
    store.drop_index()
    for lo in range(10, 900, 100):
        store.add(records[lo : lo + 100])
    assert store.codec is None  # past train_tokens, but the load is not over
    store.create_index()
    first = store.codec
    assert first is not None and first.centroids is not None
    assert store.search(_queries(records)[4], k=1)[0].id == records[::75][4].id
    store.add(_corpus(4000, seed=2)[900:])  # the collection grows 4 times: the next create_index re-trains
    store.create_index()
    assert store.codec is not None and not store.codec.same_as(first)


@pytest.mark.parametrize("config", [None, CodecConfig(kind="float16", codes=True)], ids=["default", "float16"])
def test_candidates_found_by_centroids_are_scored_as_exact_maxsim_would(
    postgres_dsn: str, config: CodecConfig | None
) -> None:
    # tokens shared across topics, as real documents have (an approximate first stage must still rank
    # the right topic's documents first)
    records = _corpus(800, common=2)
    exact = InMemoryMultiVectorStore(mode="exact")
    exact.add(records)
    queries = _queries(records)
    config = dataclasses.replace(config or default_codec(), train_tokens=2000)
    store = PgVectorStore(postgres_dsn, collection=_collection(), codec=config)
    store.add(records)
    codec = store.codec
    assert codec is not None and codec.centroids is not None
    assert codec.bytes_per_token == (2 * DIM + 2 if config.kind == "float16" else DIM + 2)
    opts = PgSearchOptions(n_candidates=100, n_rescore=40)  # candidates by the lists and centroid interaction
    for q in queries:
        got, truth = store.search(q, k=10, options=opts), exact.search(q, k=10)
        assert len({h.id for h in got} & {h.id for h in truth}) >= 8
        assert got[0].id == truth[0].id and got[0].score == pytest.approx(truth[0].score, abs=2e-2)
    assert PgVectorStore(postgres_dsn, collection=_collection()).codec_config == default_codec()  # a new one
    reopened = PgVectorStore(postgres_dsn, collection=store.collection)  # as it was made, whatever the default
    assert reopened.codec is not None and reopened.codec.config == config and reopened.codec_config == config


def test_training_ignores_where_the_rows_lie_in_the_table(postgres_dsn: str) -> None:
    """The codec is a function of the records and the seed: not of the heap's physical order, which space
    freed by other collections (or updates) reshuffles. (The sample was read in that order, so k-means
    started elsewhere and a full-suite run trained another codebook than an isolated one.)"""
    config = CodecConfig(kind="float16", codes=True, train_tokens=100_000)  # trained only when asked
    records = _corpus(600)
    stores = [PgVectorStore(postgres_dsn, collection=_collection(), codec=config) for _ in range(2)]
    for store in stores:
        store.add(records)
    with psycopg.connect(postgres_dsn) as conn:  # move the first half of the second collection's rows
        conn.execute(
            "UPDATE ragplug_records SET metadata = metadata || '{\"moved\": true}' WHERE collection = %s "
            "AND (metadata ->> 'i')::int < 300",
            [stores[1].collection],
        )
        heap = [
            r[0]
            for r in conn.execute(
                "SELECT id FROM ragplug_records WHERE collection = %s ORDER BY ctid", [stores[1].collection]
            )
        ]
    assert heap != [r.id for r in records]  # the rows do lie in another order
    assert all(store.train_codec() for store in stores)
    first, second = (store.codec for store in stores)
    assert first is not None and second is not None and first.same_as(second)


def test_a_plaid_index_copies_into_postgres_without_its_model(postgres_dsn: str) -> None:
    """colbert-ai's index (tests/fixtures/plaid) into a collection: decoded vectors, stored with the
    collection's codec (fp16 here: 40 passages stay below train_tokens), ranked as in memory."""
    import json
    from pathlib import Path

    from ragplug.retrievers.late_interaction import MemorySearchOptions
    from ragplug.retrievers.late_interaction.stores.plaid import open_plaid_index

    fixtures = Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "plaid"
    source = open_plaid_index(fixtures / "colbert-2bit", collection=fixtures / "collection.tsv")
    target = PgVectorStore(postgres_dsn, collection=_collection())
    assert copy_records(source, target) == len(source) == 40
    assert target.ids() == source.ids() and target.get(["7"])[0].text == source.get(["7"])[0].text
    from ragplug.retrievers.colbert import ColBERTEncoder

    encoder = ColBERTEncoder(fixtures / "model", device="cpu", query_maxlen=32, doc_maxlen=48)
    expected = json.loads((fixtures / "colbert-2bit.expected.json").read_text())
    for query in encoder.encode_queries(expected["queries"][:4]):
        memory = [h.id for h in source.search(query, k=5, options=MemorySearchOptions(mode="exact"))]
        assert [h.id for h in target.search(query, k=5, options=PgSearchOptions(exact=True, n_candidates=40))] == memory


def _listed(dsn: str, collection: str) -> tuple[dict[int, set[int]], dict[int, int]]:
    """A collection's inverted lists as stored: the seqs under each centroid, and its number of parts."""
    seqs: dict[int, set[int]] = {}
    parts: dict[int, int] = {}
    with psycopg.connect(dsn) as conn:
        for centroid, blob in conn.execute(
            "SELECT centroid, seqs FROM ragplug_postings WHERE collection = %s", [collection]
        ).fetchall():
            seqs.setdefault(centroid, set()).update(np.frombuffer(blob, dtype="<i8").tolist())
            parts[centroid] = parts.get(centroid, 0) + 1
    return seqs, parts


def _owned(dsn: str, collection: str) -> dict[int, set[int]]:
    """What the lists must hold: each live record's seq under every centroid of its codes."""
    out: dict[int, set[int]] = {}
    with psycopg.connect(dsn) as conn:
        for seq, codes in conn.execute(
            "SELECT seq, codes FROM ragplug_records WHERE collection = %s", [collection]
        ).fetchall():
            for centroid in np.unique(np.frombuffer(codes, dtype="<u2")).tolist():
                out.setdefault(centroid, set()).add(seq)
    return out


def test_postings_scores_are_the_memory_index_approximate_scores() -> None:
    from ragplug.retrievers.late_interaction.codecs import Codec
    from ragplug.retrievers.late_interaction.ivf import CentroidIndex

    records = _corpus(200)
    vectors = np.concatenate([r.vectors for r in records])
    lengths = np.array([len(r.vectors) for r in records], dtype=np.int64)
    codec = Codec.train(CodecConfig(kind="float32", codes=True, n_centroids=128), vectors)
    assert codec.centroids is not None
    index = CentroidIndex(codec.centroids, codec.encode(codec.prepare(vectors))["codes"].astype(np.int32))
    seqs = 1000 + 3 * np.arange(len(records))  # any increasing ids
    codes = [c.astype("<u2").tobytes() for c in np.split(index.codes, np.cumsum(lengths)[:-1])]
    parts = coded.postings_parts(seqs.tolist(), codes, codec)
    cut = [len(blob) // 16 * 8 for _, blob in parts]  # each list in two parts, as writes leave them
    split = [(c, b[:n]) for (c, b), n in zip(parts, cut, strict=True)] + [
        (c, b[n:]) for (c, b), n in zip(parts, cut, strict=True)
    ]
    unlisted = 0
    for query in map(codec.prepare, _queries(records)):  # in the codec's space, as a search has it
        found = coded.probe(codec, query, 2)
        listed, scores = coded.postings_scores(found, [p for p in split if p[0] in found.wanted])
        expected = index.approximate_scores(query, lengths, 2)
        in_lists = np.isin(seqs, listed)
        assert np.array_equal(listed, seqs[in_lists])
        np.testing.assert_allclose(scores, expected[in_lists], rtol=1e-5, atol=1e-5)
        assert np.all(expected[~in_lists] <= scores.min() + 1e-6)  # the unlisted hold the imputed floor
        unlisted += int((~in_lists).sum())
    assert unlisted  # the probes did leave records out


def test_inverted_lists_follow_every_write_merge_as_parts_pile_up_and_compact_drops_the_deleted(
    postgres_dsn: str,
) -> None:
    store = PgVectorStore(postgres_dsn, collection=_collection(), codec=RESIDUAL)
    records = _corpus(600)
    store.add(records[:300])  # 2,400 tokens: the codec trains and the lists are built whole
    assert store.codec is not None
    listed, parts = _listed(postgres_dsn, store.collection)
    assert listed == _owned(postgres_dsn, store.collection) and set(parts.values()) == {1}
    for lo in range(300, 600, 10):  # 30 writes of 10 documents over 10 of the 30 topics: each topic's
        store.add(records[lo : lo + 10])  # centroids get a part from every third write
    store.delete([f"d{i}" for i in range(0, 600, 7)])
    store.upsert([Record("d8", records[9].vectors, {"i": 8})])
    listed, parts = _listed(postgres_dsn, store.collection)
    owned = _owned(postgres_dsn, store.collection)
    assert all(seqs <= listed[c] for c, seqs in owned.items())  # every live record is listed: nothing lost
    assert max(parts.values()) <= coded.MAX_PARTS  # crowded centroids were merged (10 writes touched each)
    exact = PgSearchOptions(exact=True)
    for q in _queries(records[300:]):
        assert store.search(q, k=1)[0].id == store.search(q, k=1, options=exact)[0].id
    store.compact()  # rebuilt from the live records' codes: the deleted and replaced ones are gone
    listed, parts = _listed(postgres_dsn, store.collection)
    assert listed == _owned(postgres_dsn, store.collection) and set(parts.values()) == {1}


_LIST_WRITER = textwrap.dedent(
    """
    import sys, numpy as np
    from ragplug.retrievers.late_interaction import Record
    from ragplug.retrievers.late_interaction.stores.postgres import PgVectorStore
    dsn, collection, prefix = sys.argv[1], sys.argv[2], sys.argv[3]
    store = PgVectorStore(dsn, collection=collection)
    rng = np.random.default_rng(ord(prefix))
    topics = np.random.default_rng(0).standard_normal((30, 32))
    for r in range(40):
        batch = []
        for j in range(3):
            x = topics[(3 * r + j) % 30] + 0.5 * rng.standard_normal((8, 32))
            batch.append(Record(f"{prefix}-{r}-{j}", (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)))
        store.add(batch)
        if r % 5 == 4:
            store.delete([f"{prefix}-{r - 1}-0"])
    print("done", flush=True)
    """
)


def test_two_writer_processes_keep_the_inverted_lists_whole(postgres_dsn: str) -> None:
    store = PgVectorStore(postgres_dsn, collection=_collection(), codec=RESIDUAL)
    store.add(_corpus(300))
    assert store.codec is not None
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    writers = [
        subprocess.Popen(
            [sys.executable, "-c", _LIST_WRITER, postgres_dsn, store.collection, prefix],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        for prefix in "ab"
    ]
    for writer in writers:
        out, err = writer.communicate(timeout=300)
        assert writer.returncode == 0 and "done" in out, err
    assert len(store) == 300 + 2 * (120 - 8)
    listed, parts = _listed(postgres_dsn, store.collection)
    assert all(seqs <= listed[c] for c, seqs in _owned(postgres_dsn, store.collection).items())
    assert max(parts.values()) <= coded.MAX_PARTS + 1  # a write that found the merge lock taken adds one


def test_a_version_2_collection_builds_its_inverted_lists_on_first_search(postgres_dsn: str) -> None:
    store = PgVectorStore(postgres_dsn, collection=_collection(), codec=RESIDUAL)
    records = _corpus(400)
    store.add(records)
    query = _queries(records)[5]
    ranked = [h.id for h in store.search(query, k=5)]
    with psycopg.connect(postgres_dsn, autocommit=True) as conn:  # as a version 2 collection was: no lists
        conn.execute("DELETE FROM ragplug_postings WHERE collection = %s", [store.collection])
        conn.execute("UPDATE ragplug_collections SET codec = codec - 'postings' WHERE name = %s", [store.collection])
    reopened = PgVectorStore(postgres_dsn, collection=store.collection)
    assert [h.id for h in reopened.search(query, k=5)] == ranked
    listed, _ = _listed(postgres_dsn, store.collection)
    assert listed == _owned(postgres_dsn, store.collection)


def test_a_reopened_collection_reports_the_codec_it_was_made_with_before_training(postgres_dsn: str) -> None:
    store = PgVectorStore(postgres_dsn, collection=_collection(), codec=RESIDUAL)
    store.add(_corpus(10))  # far below train_tokens: nothing trained yet
    reopened = PgVectorStore(postgres_dsn, collection=store.collection)  # the default would be 8-bit residuals
    assert reopened.codec is None and reopened.codec_config == RESIDUAL != default_codec()


def test_older_tables_are_refused_without_create_schema_and_upgraded_with_it(postgres_dsn: str) -> None:
    schema = f"old_{uuid.uuid4().hex[:8]}"
    PgVectorStore(postgres_dsn, collection="x", schema=schema).create_schema()
    with psycopg.connect(postgres_dsn, autocommit=True) as conn:
        conn.execute(f'UPDATE "{schema}".ragplug_schema_version SET version = 2')
    with pytest.raises(StoreError, match=r"version 2, older .* call create_schema\(\)"):
        len(PgVectorStore(postgres_dsn, collection="x", schema=schema, create_schema=False))
    assert len(PgVectorStore(postgres_dsn, collection="x", schema=schema)) == 0  # upgraded in place
    assert len(PgVectorStore(postgres_dsn, collection="x", schema=schema, create_schema=False)) == 0


def test_a_search_batch_sees_one_state_of_the_collection(postgres_dsn: str, monkeypatch: pytest.MonkeyPatch) -> None:
    store = PgVectorStore(postgres_dsn, collection=_collection(), codec=RESIDUAL)
    records = _corpus(300)
    store.add(records)
    query = _queries(records)[0]
    best = store.search(query, k=1)[0].id
    score_rows, calls = coded.scoring_rows, []

    def deleting_meanwhile(*args: object) -> object:  # between the batch's two queries, another client deletes
        if not calls:
            PgVectorStore(postgres_dsn, collection=store.collection).delete([best])
        calls.append(1)
        return score_rows(*args)

    monkeypatch.setattr(coded, "scoring_rows", deleting_meanwhile)
    first, second = store.search_batch([query, query], k=1)
    assert len(calls) == 2 and first[0].id == second[0].id == best  # the second query saw the same state
    assert best not in store and store.search(query, k=1)[0].id != best  # the next search sees the delete
