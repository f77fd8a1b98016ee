"""Token codecs (float16, residual with 1/2/4 bits, projection) and the memory store that keeps its tokens with them."""

from __future__ import annotations

import dataclasses
import itertools
import json
import mmap
import os
from pathlib import Path

import numpy as np
import pytest

from ragplug.errors import InvalidInputError, StoreCorruptedError
from ragplug.retrievers.late_interaction import InMemoryMultiVectorStore, Record
from ragplug.retrievers.late_interaction.codecs import (
    Codec,
    CodecConfig,
    _buckets,
    codec_config,
    pack_residuals,
    unpack_residuals,
)
from ragplug.retrievers.late_interaction.stores.folder import write_folder

DIM = 32


def _clustered(n: int, dim: int = DIM, seed: int = 0, n_clusters: int = 40) -> np.ndarray:
    """Unit vectors around a few directions, like token embeddings (a codec has structure to find)."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((n_clusters, dim))
    x = centres[rng.integers(0, n_clusters, n)] + 0.4 * rng.standard_normal((n, dim))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def _unit_rows(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def _docs(n_docs: int, seed: int = 0) -> list[Record]:
    x = _clustered(n_docs * 12, seed=seed)
    return [Record(f"d{i}", x[12 * i : 12 * i + 12], {"i": i}) for i in range(n_docs)]


def _mapped(array: object) -> bool:
    """True when ``array`` is a view of a memory-mapped file."""
    while array is not None:
        if isinstance(array, (np.memmap, mmap.mmap)):
            return True
        array = getattr(array, "base", None)
    return False


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    return float((a * b).sum(axis=1).mean())


# -- the residual bit layout ------------------------------------------------------------------------
def test_residual_bits_are_laid_out_as_colbert_ai_lays_them() -> None:
    # per dimension its bits lowest first (1 -> 10, 2 -> 01, 3 -> 11, 0 -> 00), the bit string big-endian
    assert pack_residuals(np.array([[1, 2, 3, 0]], dtype=np.uint8), 2).tolist() == [[0b10011100]]
    assert pack_residuals(np.array([[1, 0, 0, 0, 0, 0, 0, 1]], dtype=np.uint8), 1).tolist() == [[0b10000001]]
    assert pack_residuals(np.array([[3, 12]], dtype=np.uint8), 4).tolist() == [[0b11000011]]


@pytest.mark.parametrize("nbits", [1, 2, 4, 8])
def test_packing_round_trips(nbits: int) -> None:
    buckets = np.random.default_rng(nbits).integers(0, 2**nbits, (50, 64)).astype(np.uint8)
    packed = pack_residuals(buckets, nbits)
    assert packed.shape == (50, 64 * nbits // 8)
    assert np.array_equal(unpack_residuals(packed, nbits), buckets)


# -- codecs -----------------------------------------------------------------------------------------
def test_more_bits_decode_closer_and_cost_what_they_say() -> None:
    x = _clustered(6000)
    quality = {}
    for nbits in (1, 2, 4, 8):
        codec = Codec.train(CodecConfig(kind="residual", nbits=nbits), x)
        columns = codec.encode(codec.prepare(x))
        assert codec.bytes_per_token == sum(c[0].nbytes for c in columns.values()) == 2 + DIM * nbits // 8
        decoded = codec.decode(columns)
        assert np.allclose(np.linalg.norm(decoded, axis=1), 1.0, atol=1e-5)
        quality[nbits] = _cosine(decoded, x)
    assert 0.9 < quality[1] < quality[2] < quality[4] < quality[8]
    assert quality[4] > 0.99
    assert 1 - quality[8] < (1 - quality[4]) / 20  # a byte per dimension: close to lossless


def test_eight_bit_ranks_like_float32() -> None:
    """Near-ties are where residual codecs lose recall; 8 bits keeps each best match within 1e-3."""
    x = _clustered(6000)
    codec = Codec.train(CodecConfig(kind="residual", nbits=8), x)
    decoded = codec.decode(codec.encode(codec.prepare(x)))
    q = x[::97]
    assert np.abs(q @ decoded.T - q @ x.T).mean() < 1e-3
    assert np.abs((q @ decoded.T).max(axis=1) - (q @ x.T).max(axis=1)).max() < 1e-3


@pytest.mark.parametrize(
    "spec",
    ["float32", "float16", "residual-1bit", "residual", "residual-8bit", {"kind": "residual", "dim": 16}, "pq"],
)
def test_similarities_score_what_decoding_scores(spec: str | dict[str, object]) -> None:
    """The scorer's short cut (products divided by the rows' norms) gives the decoded vectors' products."""
    x = _clustered(3000)
    config = CodecConfig(**spec) if isinstance(spec, dict) else codec_config(spec)
    codec = Codec.train(config, x) if config.needs_training else Codec.untrained(config, DIM)
    columns = codec.encode(codec.prepare(x))
    query = codec.prepare(x[::301])
    rows = np.array([5, 2999, 0, 17, 17], dtype=np.int64)
    picked = {name: col[rows] for name, col in columns.items()}
    expected = query @ codec.decode(picked).T
    got = codec.similarities(query, picked)
    assert got.shape == expected.shape and got.dtype == np.float32
    np.testing.assert_allclose(got, expected, atol=2e-6)


def test_rotated_codes_spend_bits_where_the_residuals_are() -> None:
    """When residual variance is uneven across directions (as in real token vectors), the rotated codec
    keeps less error than 2-bit residuals in fewer bytes, gives the loud directions more bits, and its
    widths fill whole bytes within the budget."""
    from ragplug.retrievers.late_interaction.codecs import WIDTHS

    rng = np.random.default_rng(3)
    centres = rng.standard_normal((40, DIM))
    loudness = np.geomspace(1.0, 0.02, DIM)  # residual spread by direction, in a random basis
    basis, _ = np.linalg.qr(rng.standard_normal((DIM, DIM)))
    noise = (rng.standard_normal((8000, DIM)) * loudness) @ basis.T
    x = centres[rng.integers(0, 40, 8000)] + 0.5 * noise
    x = (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)

    def error(codec: Codec) -> float:
        decoded = codec.lift(codec.decode(codec.encode(codec.prepare(x))))
        return float(((decoded - x) ** 2).sum(axis=1).mean())

    residual = Codec.train(CodecConfig(kind="residual", nbits=2), x)
    rotated = Codec.train(CodecConfig(kind="rotated"), x)  # dim * 2 / 8 = 8 bytes, centroid id included
    assert rotated.bytes_per_token <= 8 < residual.bytes_per_token == 10
    assert error(rotated) < 0.8 * error(residual)
    assert rotated.widths is not None and set(rotated.widths.tolist()) <= set(WIDTHS)
    assert rotated.widths[0] >= 2 and rotated.widths[-1] == 0  # stored widest first; quiet directions get none
    assert rotated.encode(rotated.prepare(x[:5]))["residuals"].shape == (5, rotated.bytes_per_token - 2)
    bigger = Codec.train(CodecConfig(kind="rotated", token_bytes=20), x)
    assert bigger.bytes_per_token <= 20 and error(bigger) < error(rotated)


def test_product_quantised_codes_keep_less_error_than_rotated_ones_in_the_same_bytes() -> None:
    """Codewords of groups of dimensions (``pq``) against bits per dimension (``rotated``), on the same
    uneven residuals: less error in the same bytes of codes (``pq`` also keeps a byte for the norm, which lets
    it score without decoding), one byte per group, every dimension in a group."""
    rng = np.random.default_rng(3)
    centres = rng.standard_normal((40, DIM))
    loudness = np.geomspace(1.0, 0.02, DIM)
    basis, _ = np.linalg.qr(rng.standard_normal((DIM, DIM)))
    x = centres[rng.integers(0, 40, 8000)] + 0.5 * (rng.standard_normal((8000, DIM)) * loudness) @ basis.T
    x = (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)

    def error(codec: Codec) -> float:
        decoded = codec.lift(codec.decode(codec.encode(codec.prepare(x))))
        return float(((decoded - x) ** 2).sum(axis=1).mean())

    for budget in (8, 12):
        rotated = Codec.train(CodecConfig(kind="rotated", token_bytes=budget - 1), x)
        pq = Codec.train(CodecConfig(kind="pq", token_bytes=budget), x)
        assert pq.bytes_per_token <= budget and pq.widths is not None
        assert len(pq.widths) == pq.bytes_per_token - 3  # a byte per group after the centroid id and the norm
        assert pq.encode(pq.prepare(x[:5]))["residuals"].shape == (5, len(pq.widths) + 1)
        assert int(pq.widths.sum()) == DIM and (np.diff(pq.widths) >= 0).all()  # narrowest first, all covered
        assert error(pq) < 0.9 * error(rotated), budget


def test_bad_pq_settings_and_damaged_codebooks_are_refused() -> None:
    x = _clustered(3000)
    with pytest.raises(InvalidInputError, match="at least 2 bytes after the centroid id and the norm"):
        Codec.train(CodecConfig(kind="pq", token_bytes=4), x)  # 32 dims, at most 16 per byte
    assert codec_config("pq-4bit") == CodecConfig(kind="pq", nbits=4)
    codec = Codec.train(CodecConfig(kind="pq"), x)
    arrays = codec.arrays()
    assert Codec.restore(codec.to_dict(), arrays, "x").same_as(codec)
    widths, books = arrays["widths"], arrays["codebooks"]
    for changed, problem in (
        ({"widths": widths[::-1].copy()}, "storage order"),
        ({"widths": np.append(widths, 1.0).astype(np.float32)}, "storage order|codebooks of shape"),
        ({"widths": np.full(len(widths), 17.0, dtype=np.float32)}, "from 1 to 16"),
        ({"codebooks": books[:, :128]}, "codebooks of shape"),
        ({"codebooks": np.full_like(books, np.nan)}, "finite values"),
    ):
        with pytest.raises(StoreCorruptedError, match=problem):
            Codec.restore(codec.to_dict(), {**arrays, **changed}, "x")
    rotated = Codec.train(CodecConfig(kind="rotated"), x)
    with pytest.raises(StoreCorruptedError, match="no codebooks"):
        Codec.restore(rotated.to_dict(), {**rotated.arrays(), "codebooks": books}, "x")


def test_pq_tokens_keep_their_decoded_norm_and_score_without_decoding(monkeypatch: pytest.MonkeyPatch) -> None:
    """A ``pq`` token's last byte names its decoded vector's norm: decoding divides by it (unit vectors up to
    the norm levels' spacing), and the summed look-up tables (torch) give the same similarities as decoding
    then a product (numpy, the path without torch), for queries of any length and any number of rows."""
    from ragplug import _extras

    x = _clustered(6000, dim=64, seed=5)
    codec = Codec.train(CodecConfig(kind="pq", token_bytes=20), x)
    assert codec.cutoffs is not None and codec.weights is not None and codec.residual_bytes == 18
    columns = codec.encode(codec.prepare(x[:700]))
    decoded = codec.decode(columns)
    assert np.allclose(np.linalg.norm(decoded, axis=1), 1.0, atol=2e-3)
    exact_norms = np.linalg.norm(codec._unnormalised(columns), axis=1)
    assert np.abs(codec._norms(columns) / exact_norms - 1.0).max() < 2e-3
    for n_query, rows in ((1, slice(0, 700)), (23, slice(5, 300)), (32, slice(0, 0)), (40, slice(600, 700))):
        query = codec.prepare(_clustered(n_query, dim=64, seed=n_query))
        part = {name: col[rows] for name, col in columns.items()}
        assert _extras.is_available("torch")
        fast = codec.similarities(query, part)
        assert fast.shape == (n_query, len(part["codes"]))
        np.testing.assert_allclose(fast, query @ codec.decode(part).T, atol=2e-5)
        monkeypatch.setattr(_extras, "is_available", lambda module: False)
        monkeypatch.setattr("ragplug.retrievers.late_interaction.codecs.is_available", lambda module: False)
        np.testing.assert_allclose(codec.similarities(query, part), fast, atol=2e-5)
        monkeypatch.undo()


def test_pq_codecs_saved_without_norms_still_decode_and_score() -> None:
    """A ``pq`` codec from before the norm byte (no norm buckets: a byte per group only) restores, codes,
    decodes to unit vectors and scores as its decoded vectors do; damaged norm buckets are refused."""
    x = _clustered(4000, dim=64, seed=6)
    codec = Codec.train(CodecConfig(kind="pq", token_bytes=20), x)
    arrays = {k: v for k, v in codec.arrays().items() if k not in ("cutoffs", "weights")}
    older = Codec.restore(codec.to_dict(), arrays, "older")
    assert older.residual_bytes == codec.residual_bytes - 1 and older.bytes_per_token == 19
    columns = older.encode(older.prepare(x[:50]))
    assert columns["residuals"].shape == (50, older.residual_bytes)
    np.testing.assert_allclose(columns["residuals"], codec.encode(codec.prepare(x[:50]))["residuals"][:, :-1])
    decoded = older.decode(columns)
    assert np.allclose(np.linalg.norm(decoded, axis=1), 1.0, atol=1e-5)
    query = older.prepare(x[100:110])
    np.testing.assert_allclose(older.similarities(query, columns), query @ decoded.T, atol=2e-5)
    full = codec.arrays()
    for changed, problem in (
        ({"cutoffs": full["cutoffs"][:100]}, "255 norm cutoffs"),
        ({"weights": -full["weights"]}, "positive norm values"),
        ({"cutoffs": full["cutoffs"][::-1].copy()}, "increasing cutoffs"),
    ):
        with pytest.raises(StoreCorruptedError, match=problem):
            Codec.restore(codec.to_dict(), {**full, **changed}, "x")
    with pytest.raises(StoreCorruptedError, match="or neither"):
        Codec.restore(codec.to_dict(), {**arrays, "cutoffs": full["cutoffs"]}, "x")


def test_centroid_scale_multiplies_the_default_centroid_count() -> None:
    x = _clustered(5000, dim=16, seed=8)
    plain = Codec.train(CodecConfig(kind="residual"), x)
    finer = Codec.train(CodecConfig(kind="residual", centroid_scale=2), x)
    assert plain.centroids is not None and finer.centroids is not None
    assert len(finer.centroids) == 2 * len(plain.centroids)
    fixed = Codec.train(CodecConfig(kind="residual", centroid_scale=4, n_centroids=32), x)
    assert fixed.centroids is not None and len(fixed.centroids) == 32  # a count given is used as is
    for bad in (0, 3, 2.0, True):
        with pytest.raises(InvalidInputError, match="centroid_scale must be a power of two"):
            CodecConfig(kind="pq", centroid_scale=bad)  # type: ignore[arg-type]


def test_the_bit_allocation_fits_the_budget_in_whole_bytes() -> None:
    from ragplug.retrievers.late_interaction.codecs import WIDTHS, _allocate

    rng = np.random.default_rng(0)
    for trial in range(20):
        dim = int(rng.integers(4, 200))
        variance = rng.gamma(0.5, 1.0, dim)
        errors = variance[:, None] * np.array([2.0 ** (-1.7 * w) for w in WIDTHS])[None, :]
        budget = int(rng.integers(0, 9 * dim))
        widths = _allocate(errors, budget)
        assert widths.sum() <= budget, trial
        assert all((int((widths == w).sum()) * w) % 8 == 0 for w in WIDTHS), trial
        louder = np.argsort(-variance)
        assert widths[louder[0]] >= widths[louder[-1]], trial


def test_bad_rotated_settings_and_damaged_widths_are_refused() -> None:
    x = _clustered(3000)
    with pytest.raises(InvalidInputError, match="token_bytes applies to the rotated and pq codecs"):
        CodecConfig(kind="residual", token_bytes=40)
    with pytest.raises(InvalidInputError, match="more than 2 bytes per token"):
        Codec.train(CodecConfig(kind="rotated", token_bytes=2), x)
    assert codec_config("rotated-4bit") == CodecConfig(kind="rotated", nbits=4)
    with pytest.raises(InvalidInputError, match="rotated-1bit"):
        codec_config("rotated-3bit")
    codec = Codec.train(CodecConfig(kind="rotated"), x)
    arrays = codec.arrays()
    assert Codec.restore(codec.to_dict(), arrays, "x").same_as(codec)
    for widths, problem in (
        (np.full(DIM, 3.0, dtype=np.float32), "widths, each one of"),
        (arrays["widths"][::-1].copy(), "storage order"),
        (np.array([1.0] * 3 + [0.0] * (DIM - 3), dtype=np.float32), "whole bytes of 1-bit"),
        (np.full(DIM, 8.0, dtype=np.float32), "at most 8 bytes per token"),
    ):
        with pytest.raises(StoreCorruptedError, match=problem):
            Codec.restore(codec.to_dict(), {**arrays, "widths": widths}, "x")
    with pytest.raises(StoreCorruptedError, match="widths"):
        Codec.restore(codec.to_dict(), {k: v for k, v in arrays.items() if k != "widths"}, "x")


def test_lloyd_max_buckets_beat_colbert_ai_quantiles() -> None:
    """Fitted buckets cost less squared error than quantile cutoffs with median values, most in the tails."""
    values = np.random.default_rng(0).standard_t(4, 200_000).astype(np.float32) * 0.05
    for n_buckets in (4, 16, 256):
        cutoffs, weights = _buckets(values, n_buckets)
        assert np.all(np.diff(weights) > 0) and np.all((cutoffs > weights[:-1]) & (cutoffs < weights[1:]))
        quantile_cutoffs = np.quantile(values, np.arange(1, n_buckets) / n_buckets)
        quantile_weights = np.quantile(values, np.arange(n_buckets) / n_buckets + 0.5 / n_buckets)
        error = {}
        for name, (cut, w) in {"lloyd": (cutoffs, weights), "quantile": (quantile_cutoffs, quantile_weights)}.items():
            error[name] = float(((w[np.searchsorted(cut, values)] - values) ** 2).mean())
        assert error["lloyd"] < 0.9 * error["quantile"]


def test_float16_keeps_half_precision() -> None:
    x = _clustered(100)
    codec = Codec.untrained(CodecConfig(kind="float16"), DIM)
    decoded = codec.decode(codec.encode(x))
    assert decoded.dtype == np.float32 and np.array_equal(decoded, x.astype(np.float16).astype(np.float32))


@pytest.mark.parametrize("projection", ["pca", "random"])
def test_a_projection_lifts_back_to_the_same_vectors(projection: str) -> None:
    x = _clustered(3000)
    codec = Codec.train(CodecConfig(kind="float32", dim=8, projection=projection), x)
    stored = codec.prepare(x)
    assert stored.shape == (3000, 8)
    lifted = codec.lift(stored)
    assert lifted.shape == (3000, DIM)
    np.testing.assert_allclose(codec.prepare(lifted), stored, atol=1e-5)
    if projection == "pca":  # the fitted map keeps more of the dot products than chance would
        random = Codec.train(CodecConfig(kind="float32", dim=8, projection="random"), x)
        q = x[:50]
        exact = q @ x.T
        err = {c: np.abs(c.prepare(q) @ c.prepare(x).T - exact).mean() for c in (codec, random)}
        assert err[codec] < err[random]


def test_bad_codec_settings_are_refused_clearly() -> None:
    with pytest.raises(InvalidInputError, match="nbits"):
        CodecConfig(kind="residual", nbits=3)
    with pytest.raises(InvalidInputError, match="unknown codec kind"):
        CodecConfig(kind="int8")
    with pytest.raises(InvalidInputError, match="residual-1bit"):
        codec_config("residual-3bit")
    with pytest.raises(InvalidInputError, match="must be trained"):
        Codec.untrained(CodecConfig(kind="residual"), DIM)
    with pytest.raises(InvalidInputError, match="up to"):
        Codec.train(CodecConfig(dim=64), _clustered(100))
    with pytest.raises(InvalidInputError, match="divisible by 8"):
        Codec.train(CodecConfig(kind="residual", nbits=1, dim=12), _clustered(500))
    assert codec_config("residual-4bit") == CodecConfig(kind="residual", nbits=4)
    assert codec_config("residual-8bit") == CodecConfig(kind="residual", nbits=8)
    assert codec_config("float16").kind == "float16"


def test_a_damaged_saved_codec_is_corruption() -> None:
    codec = Codec.train(CodecConfig(kind="residual"), _clustered(2000))
    arrays = codec.arrays()
    with pytest.raises(StoreCorruptedError, match="centroids"):
        Codec.restore(codec.to_dict(), {**arrays, "centroids": arrays["centroids"][:, :5]}, "x")
    with pytest.raises(StoreCorruptedError, match="finite"):
        Codec.restore(codec.to_dict(), {**arrays, "weights": arrays["weights"] * np.nan}, "x")
    with pytest.raises(StoreCorruptedError, match="nbits"):
        Codec.restore({**codec.to_dict(), "config": {"kind": "residual", "nbits": 3}}, arrays, "x")
    assert Codec.restore(codec.to_dict(), arrays, "x").same_as(codec)


# -- the memory store with a codec ------------------------------------------------------------------
def test_a_store_trains_its_codec_once_it_holds_enough_tokens() -> None:
    store = InMemoryMultiVectorStore(codec=CodecConfig(kind="residual", train_tokens=1200))
    docs = _docs(200)
    store.add(docs[:90])  # 1,080 tokens: kept as they came
    assert store.codec is None
    assert np.array_equal(store.get(["d0"])[0].vectors, docs[0].vectors)
    store.add(docs[90:])
    assert store.codec is not None and store.codec.config.kind == "residual"
    assert store.nbytes == store.n_tokens * (2 + DIM // 4)
    assert store.index_status == "ready"  # the codec's centroids are the approximate index


@pytest.mark.parametrize(
    "config",
    [
        CodecConfig(kind="residual", kmeans_iterations=3),
        CodecConfig(kind="rotated", token_bytes=10, kmeans_iterations=3),
        CodecConfig(kind="pq", token_bytes=10, kmeans_iterations=3),
        CodecConfig(kind="pq", dim=16, token_bytes=8, kmeans_iterations=3),
        CodecConfig(kind="float16", codes=True, kmeans_iterations=3),
        CodecConfig(kind="float16", dim=16),
    ],
    ids=str,
)
def test_training_reports_each_step_it_takes(config: CodecConfig) -> None:
    """One report per step, ``done`` rising by one, the total only growing and reached at the end; k-means
    counts its iterations, and a pq codec adds a step per group of dimensions."""
    reports: list[tuple[int, int]] = []
    codec = Codec.train(config, _clustered(3000), progress=lambda done, total: reports.append((done, total)))
    done = [d for d, _ in reports]
    totals = [t for _, t in reports]
    assert all(b - a in (0, 1) for a, b in itertools.pairwise(done)) and done[0] <= 1
    assert totals == sorted(totals) and reports[-1][0] == reports[-1][1]
    kmeans = config.kmeans_iterations if config.has_codes else 0
    expected = (config.dim is not None) + kmeans + config.compressed
    if config.kind == "pq":
        assert codec.widths is not None
        expected += len(codec.widths)
    assert reports[-1][1] == expected
    assert Codec.train(config, _clustered(3000)).same_as(codec)  # reporting changes nothing trained


def test_a_store_training_its_codec_shows_a_bar_only_when_training_takes_long(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Training inside an ``add`` stays silent when quick, and shows the training and coding bars once it
    has run ``LATE_BAR_SECONDS`` (here 0)."""
    import ragplug._progress

    config = CodecConfig(kind="pq", token_bytes=10, train_tokens=1200)
    InMemoryMultiVectorStore(codec=config).add(_docs(120))
    assert "codec" not in capsys.readouterr().err
    monkeypatch.setattr(ragplug._progress, "LATE_BAR_SECONDS", 0.0)
    store = InMemoryMultiVectorStore(codec=config)
    store.add(_docs(120))
    err = capsys.readouterr().err
    assert store.codec is not None
    assert "training the pq codec" in err and "coding tokens (pq)" in err and "1440/1440" in err


def test_compressed_search_finds_what_exact_float32_finds(tmp_path: Path) -> None:
    docs = _docs(400)
    exact = InMemoryMultiVectorStore(mode="exact")
    exact.add(docs)
    queries = [d.vectors[:4] + 0.05 for d in docs[::20]]
    truth = [[h.id for h in exact.search(q, k=5)] for q in queries]
    for codec, wanted in (("float16", 1.0), ("residual-4bit", 0.9), ("residual", 0.8), ("rotated", 0.8), ("pq", 0.8)):
        store = InMemoryMultiVectorStore(mode="exact", codec=codec)
        store.add(docs)
        store.save(tmp_path / codec)
        got = [[h.id for h in store.search(q, k=5)] for q in queries]
        overlap = np.mean([len(set(g) & set(t)) / 5 for g, t in zip(got, truth, strict=True)])
        assert overlap >= wanted, (codec, overlap)
        loaded = InMemoryMultiVectorStore.load(tmp_path / codec)
        assert loaded.codec is not None and loaded.codec.same_as(store.codec)  # type: ignore[arg-type]
        assert [[h.id for h in loaded.search(q, k=5)] for q in queries] == got
        approx = [h.id for h in loaded.search(queries[0], k=5, options=loaded.search_options(mode="approximate"))]
        assert approx[0] == got[0][0]


def test_the_default_codec_keeps_small_stores_exact_and_compresses_large_ones(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without a codec a store keeps float32 vectors (saved as they are: exact scores after a load) until it
    holds ``DEFAULT_TRAIN_TOKENS`` tokens, then compresses them with ``pq`` at dim / 4 - 1 bytes per token."""
    from ragplug.retrievers.late_interaction import codecs as codecs_module

    monkeypatch.setattr(codecs_module, "DEFAULT_TRAIN_TOKENS", 3000)
    store = InMemoryMultiVectorStore()
    assert store.codec_config.kind == "pq" and store.codec_config.token_bytes is None  # no dimension yet
    small = _docs(100)
    store.add(small)
    assert store.codec_config == codecs_module.default_codec(DIM) and store.codec is None
    assert store.codec_config.token_bytes == DIM // 4 - 1 and not store.codec_config.train_on_save
    queries = [d.vectors[:4] + 0.05 for d in small[::10]]
    before = [[(h.id, h.score) for h in store.search(q, k=5)] for q in queries]
    store.save(tmp_path / "small")
    loaded = InMemoryMultiVectorStore.load(tmp_path / "small")
    assert loaded.codec is None and loaded.nbytes == 4 * DIM * 1200
    assert [[(h.id, h.score) for h in loaded.search(q, k=5)] for q in queries] == before
    more = [Record(f"e{i}", r.vectors, r.metadata) for i, r in enumerate(_docs(200, seed=1))]
    loaded.add(more)  # 3,600 tokens: past the threshold
    assert loaded.codec is not None and loaded.codec.config.kind == "pq"
    assert loaded.codec.bytes_per_token == DIM // 4 - 1 and loaded.nbytes == (DIM // 4 - 1) * 3600
    exact = InMemoryMultiVectorStore(mode="exact", codec="float32")
    exact.add(small + more)
    truth = [[h.id for h in exact.search(q, k=5)] for q in queries]
    got = [[h.id for h in loaded.search(q, k=5, options=loaded.search_options(mode="exact"))] for q in queries]
    assert np.mean([len(set(g) & set(t)) / 5 for g, t in zip(got, truth, strict=True)]) >= 0.8


def test_build_index_keeps_a_compressed_store_s_codec_and_codes() -> None:
    """A compressed store's index is its codec's centroids: ``build_index()`` does not re-train the codec on
    decoded vectors (which would quantise them twice), and approximate search still works after it."""
    store = InMemoryMultiVectorStore(mode="approximate", codec=CodecConfig(kind="pq", train_tokens=1200))
    docs = _docs(200)
    store.add(docs)
    codec, columns = store.codec, {k: v.copy() for k, v in store._tokens.columns().items()}
    assert codec is not None
    store.build_index()
    assert store.codec is codec and store.index_status == "ready"
    assert all(np.array_equal(columns[k], v) for k, v in store._tokens.columns().items())
    assert store.search(docs[7].vectors, k=1)[0].id == "d7"


def test_kept_float32_vectors_re_rank_the_final_top_k_exactly(tmp_path: Path) -> None:
    """``keep_float32``: the codes serve the search, and the final top k are re-ranked by exact MaxSim over the
    float32 vectors kept beside them (memory-mapped after a load): hits carry exact scores, in exact order,
    and records give back their vectors; float codecs and Postgres collections refuse the setting."""
    from ragplug.retrievers.late_interaction.stores.postgres import PgVectorStore

    docs = _docs(300, seed=4)
    exact = InMemoryMultiVectorStore(mode="exact", codec="float32")
    exact.add(docs)
    config = CodecConfig(kind="pq", token_bytes=6, train_tokens=1200, keep_float32=True)
    store = InMemoryMultiVectorStore(codec=config)
    store.add(docs)
    assert store.codec is not None and store.codec.bytes_per_token == 2 + 4 + 4 * DIM
    assert store.nbytes == store.n_tokens * store.codec.bytes_per_token
    rough = InMemoryMultiVectorStore(codec=dataclasses.replace(config, keep_float32=False))
    rough.add(docs)
    queries = [_unit_rows(d.vectors[:3] + 0.1) for d in docs[::25]]  # as encoders give them
    reordered = 0
    for query in queries:
        scores = {h.id: h.score for h in exact.search(query, k=len(docs))}
        for mode in ("exact", "approximate"):
            hits = store.search(query, k=5, options=store.search_options(mode=mode))
            coded = rough.search(query, k=5, options=rough.search_options(mode=mode))
            assert {h.id for h in hits} == {h.id for h in coded}  # the codes chose them
            assert [h.score for h in hits] == pytest.approx([scores[h.id] for h in hits], abs=1e-5)
            assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)
            reordered += [h.id for h in hits] != [h.id for h in coded]
    assert reordered  # the exact scores changed some order the codes gave
    assert np.allclose(store.get(["d3"])[0].vectors, docs[3].vectors, atol=1e-6)
    store.save(tmp_path / "kept")
    loaded = InMemoryMultiVectorStore.load(tmp_path / "kept")
    assert loaded._tokens.kept is not None and not loaded._tokens.kept.flags.writeable  # memory-mapped
    assert [h.id for h in loaded.search(queries[0], k=5)] == [h.id for h in store.search(queries[0], k=5)]
    with pytest.raises(InvalidInputError, match="compressed codecs"):
        CodecConfig(kind="float16", keep_float32=True)
    with pytest.raises(InvalidInputError, match="for memory stores"):
        PgVectorStore(connection="postgresql://nobody@127.0.0.1:1/none", codec=config)


def test_a_pq_search_computes_the_query_centroid_product_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """Probing the centroids and scoring the candidates from their codes share one ``query @ centroids.T``:
    the first stage asks the codec for it, and the scoring gets the same array back from its cache."""
    store = InMemoryMultiVectorStore(mode="approximate", codec=CodecConfig(kind="pq", train_tokens=1200))
    docs = _docs(200)
    store.add(docs)
    codec = store.codec
    assert codec is not None
    expected = [[(h.id, h.score) for h in store.search(d.vectors, k=3)] for d in docs[:5]]
    returned: list[np.ndarray] = []
    original = codec.centroid_sims

    def spy(query: np.ndarray) -> np.ndarray:
        returned.append(original(query))
        return returned[-1]

    monkeypatch.setattr(codec, "centroid_sims", spy)
    got = [[(h.id, h.score) for h in store.search(d.vectors, k=3)] for d in docs[:5]]
    assert got == expected
    assert len(returned) == 10 and all(a is b for a, b in zip(returned[::2], returned[1::2], strict=True))


def test_centroid_interaction_decodes_only_the_best_candidates() -> None:
    """``n_rescore`` keeps the candidates whose tokens' centroids match the query best, and only those are
    decoded: the hits are exact scores of a subset of the candidates, ranked as without the cut when the cut
    keeps them, and the centroid interaction is MaxSim over the tokens' centroids."""
    from ragplug.retrievers.late_interaction.ivf import centroid_maxsim
    from ragplug.retrievers.late_interaction.maxsim import maxsim_subset

    docs = _docs(400)
    store = InMemoryMultiVectorStore(mode="approximate", codec=CodecConfig(kind="residual", nbits=4, train_tokens=1200))
    store.add(docs)
    codec, tokens = store.codec, store._tokens
    assert codec is not None and codec.centroids is not None and tokens.codes is not None
    lengths = np.full(400, 12, dtype=np.int64)
    starts = np.arange(400, dtype=np.int64) * 12
    query = docs[7].vectors[:4] + 0.05
    sims = query @ codec.centroids.T
    docs_ = np.array([3, 7, 399], dtype=np.int64)
    as_centroids = codec.centroids[tokens.codes]
    expected = maxsim_subset(query, as_centroids, starts, lengths, docs_)
    np.testing.assert_allclose(centroid_maxsim(sims, tokens.codes, starts, lengths, docs_), expected, rtol=1e-6)

    def search(**kw: int) -> list[tuple[str, float]]:
        return [(h.id, h.score) for h in store.search(query, k=5, options=store.search_options(**kw))]

    everything = search(n_candidates=60, n_rescore=60)
    assert search(n_candidates=60, n_rescore=500) == everything
    assert search(n_candidates=60) == search(n_candidates=60, n_rescore=30)  # by default half the candidates
    cut = search(n_candidates=60, n_rescore=8)
    assert len(cut) == 5 and cut[0] == everything[0]  # the query's own document survives the cut
    exact = {h.id: h.score for h in store.search(query, k=400, options=store.search_options(mode="exact"))}
    assert all(abs(score - exact[id_]) < 1e-6 for id_, score in cut)  # exact scores, as without the cut
    for bad in (0, -1, True, 2.5):
        with pytest.raises(InvalidInputError, match="n_rescore"):
            store.search_options(n_rescore=bad)  # type: ignore[arg-type]


def test_a_projected_store_returns_vectors_in_the_encoders_space_and_copies_exactly() -> None:
    docs = _docs(300)
    config = CodecConfig(kind="float16", dim=16, train_tokens=100)
    store = InMemoryMultiVectorStore(codec=config)
    store.add(docs)
    record = store.get(["d3"])[0]
    assert record.vectors.shape == (12, DIM)
    assert _cosine(record.vectors / np.linalg.norm(record.vectors, axis=1, keepdims=True), docs[3].vectors) > 0.8
    copy = InMemoryMultiVectorStore(codec=config)
    copy.add(list(store.records()))  # trains its own projection on the lifted vectors: the same subspace
    query = docs[7].vectors[:3]
    assert [h.id for h in copy.search(query, k=5)] == [h.id for h in store.search(query, k=5)]


def test_saving_a_small_store_trains_its_codec_and_stores_few_bytes(tmp_path: Path) -> None:
    store = InMemoryMultiVectorStore(codec="residual-1bit")
    store.add(_docs(50))
    store.save(tmp_path / "s")
    assert store.codec is not None
    loaded = InMemoryMultiVectorStore.load(tmp_path / "s")
    assert loaded.nbytes == loaded.n_tokens * (2 + DIM // 8)
    vectors_file = next((tmp_path / "s").glob("vectors-*.safetensors"))
    assert vectors_file.stat().st_size < 600 * 12 * 4 * DIM // 16  # far below float32's bytes


def test_a_loaded_store_maps_its_tokens_and_verifies_each_file_once(tmp_path: Path) -> None:
    store = InMemoryMultiVectorStore()
    store.add(_docs(100))
    store.save(tmp_path / "s")
    loaded = InMemoryMultiVectorStore.load(tmp_path / "s")
    assert _mapped(loaded._tokens.columns()["vectors"])
    stamps = json.loads((tmp_path / "s" / ".ragplug-verified.json").read_text())
    vectors_file = next((tmp_path / "s").glob("vectors-*.safetensors"))
    assert list(stamps) == [vectors_file.name]
    # a file changed since it was verified (its stamp differs) is hashed again, and refused
    blob = bytearray(vectors_file.read_bytes())
    blob[-1] ^= 0xFF
    vectors_file.write_bytes(bytes(blob))
    with pytest.raises(StoreCorruptedError, match="checksum"):
        InMemoryMultiVectorStore.load(tmp_path / "s")
    # even with its old stamp restored, verify=True hashes it
    stat = stamps[vectors_file.name]
    os.utime(vectors_file, ns=(stat["mtime_ns"], stat["mtime_ns"]))
    with pytest.raises(StoreCorruptedError, match="checksum"):
        InMemoryMultiVectorStore.load(tmp_path / "s", verify=True)


def test_a_loaded_store_accepts_writes(tmp_path: Path) -> None:
    store = InMemoryMultiVectorStore(codec="residual")
    docs = _docs(120)
    store.add(docs[:100])
    store.save(tmp_path / "s")
    loaded = InMemoryMultiVectorStore.load(tmp_path / "s")
    loaded.add(docs[100:])  # the mapped, read-only columns are copied on the first write
    loaded.delete(["d0"])
    assert len(loaded) == 119 and loaded.search(docs[110].vectors, k=1)[0].id == "d110"


def test_codes_beyond_the_centroids_are_corruption(tmp_path: Path) -> None:
    store = InMemoryMultiVectorStore(codec="residual")
    store.add(_docs(60))
    store.save(tmp_path / "good")
    codec = store.codec
    assert codec is not None
    columns = {k: np.array(v) for k, v in store._tokens.columns().items()}
    columns["codes"][0] = len(codec.centroids)  # type: ignore[arg-type]
    manifest = json.loads((tmp_path / "good" / "manifest.json").read_text())
    header = {k: v for k, v in manifest.items() if k not in ("files", "sha256")}
    records = json.loads(next((tmp_path / "good").glob("records-*.json")).read_text())
    write_folder(
        tmp_path / "bad",
        header,
        tensors={"vectors": {**columns, "starts": store._starts, "lengths": store._lengths}, "codec": codec.arrays()},
        documents={"records": records},
    )
    with pytest.raises(StoreCorruptedError, match="inconsistent"):
        InMemoryMultiVectorStore.load(tmp_path / "bad")


def test_a_store_saved_in_format_version_1_still_loads(tmp_path: Path) -> None:
    docs = _docs(5)
    vectors = np.concatenate([d.vectors for d in docs])
    lengths = np.array([12] * 5, dtype=np.int64)
    header = {"format": "ragplug.multivector", "format_version": 1, "dim": DIM, "encoder": None}
    header |= {"n_records": 5, "n_tokens": 60, "mode": "auto"}
    records = {"ids": [d.id for d in docs], "metadata": [{} for _ in docs], "texts": [None] * 5}
    tensors = {"vectors": {"vectors": vectors, "starts": np.cumsum(lengths) - lengths, "lengths": lengths}}
    write_folder(tmp_path / "v1", header, tensors=tensors, documents={"records": records})
    store = InMemoryMultiVectorStore.load(tmp_path / "v1")
    assert store.codec is None and store.search(docs[2].vectors, k=1)[0].id == "d2"


def test_an_emptied_store_keeps_its_trained_codec() -> None:
    from ragplug.retrievers.late_interaction import EncoderIdentity

    store = InMemoryMultiVectorStore(codec=CodecConfig(kind="residual", train_tokens=500))
    docs = _docs(80)
    store.add(docs)
    codec = store.codec
    assert codec is not None
    store.delete([d.id for d in docs])
    store.bind_encoder(EncoderIdentity("tiny", DIM, "f00d"))
    assert store.codec is codec


def test_float_vectors_with_codes_keep_their_precision_and_index_themselves() -> None:
    store = InMemoryMultiVectorStore(codec=CodecConfig(kind="float16", codes=True, train_tokens=500))
    docs = _docs(100)
    store.add(docs)
    codec = store.codec
    assert codec is not None and codec.column_names == ("vectors", "codes")
    assert store.nbytes == store.n_tokens * (2 * DIM + 2) and store.index_status == "ready"
    back = store.get(["d7"])[0].vectors
    assert np.array_equal(back, docs[7].vectors.astype(np.float16).astype(np.float32))
    hit = store.search(docs[7].vectors, k=1, options=store.search_options(mode="approximate"))[0]
    assert hit.id == "d7"
