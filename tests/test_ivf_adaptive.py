"""The adaptive rules of the approximate search (ApproximateConfig.effective, centroids_for); no timing."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from ragplug.errors import InvalidInputError
from ragplug.retrievers.late_interaction.ivf import (
    MAX_ADAPTED_CANDIDATES,
    MAX_ADAPTED_PROBE,
    REFERENCE_DOC_TOKENS,
    REFERENCE_DOCS,
    ApproximateConfig,
    CentroidIndex,
)

SCIFACT = (5_183, 1_693_234)  # documents, tokens (MiniLM, doc_maxlen 512): 327 tokens per document
TWOWIKI = (6_119, 622_948)  # 102 tokens per document


def test_long_documents_in_a_small_corpus_keep_the_settings_as_given() -> None:
    assert ApproximateConfig().effective(*SCIFACT, k=10) == (8, 256)
    assert ApproximateConfig(n_probe=4, n_candidates=40).effective(*SCIFACT, k=10) == (4, 40)


def test_short_documents_get_more_probes_and_candidates() -> None:
    n_probe, n_candidates = ApproximateConfig().effective(*TWOWIKI, k=10)
    assert (n_probe, n_candidates) == (24, 439)  # the values benchmarks/approx_recall.py measured


@pytest.mark.parametrize("n_docs", [1_000, 10_000, 100_000])
def test_shorter_documents_never_get_fewer(n_docs: int) -> None:
    config = ApproximateConfig()
    previous = (0, 0)
    for mean_tokens in (2_000, 600, 300, 200, 100, 50, 20, 5, 1):
        current = config.effective(n_docs, n_docs * mean_tokens, k=10)
        assert current[0] >= previous[0] and current[1] >= previous[1], (mean_tokens, previous, current)
        previous = current


@pytest.mark.parametrize("mean_tokens", [10, 100, 300, 1_000])
def test_larger_corpora_never_get_fewer(mean_tokens: int) -> None:
    config = ApproximateConfig()
    previous = (0, 0)
    for n_docs in (10, 100, 1_000, REFERENCE_DOCS, 30_000, 100_000, 1_000_000, 10_000_000):
        current = config.effective(n_docs, n_docs * mean_tokens, k=10)
        assert current[0] >= previous[0] and current[1] >= previous[1], (n_docs, previous, current)
        previous = current
    # the probes follow the document length only
    assert config.effective(1_000, 1_000 * mean_tokens, k=10)[0] == previous[0]


def test_corpus_size_grows_candidates_past_the_reference_only() -> None:
    config = ApproximateConfig()
    at_reference = config.effective(REFERENCE_DOCS, REFERENCE_DOCS * REFERENCE_DOC_TOKENS, k=10)
    eight_times = config.effective(8 * REFERENCE_DOCS, 8 * REFERENCE_DOCS * REFERENCE_DOC_TOKENS, k=10)
    assert at_reference == (8, 256)
    assert eight_times == (8, 512)  # the cube root: twice the candidates for eight times the documents


def test_bounds() -> None:
    config = ApproximateConfig()
    # one-token documents in a huge corpus: capped
    assert config.effective(50_000_000, 50_000_000, k=10) == (MAX_ADAPTED_PROBE, MAX_ADAPTED_CANDIDATES)
    # never more candidates than documents, never fewer than 4 * k (when there are that many documents)
    assert config.effective(100, 1_000, k=10)[1] == 100
    assert config.effective(20, 200, k=10)[1] == 20
    assert config.effective(5_000, 5_000 * 300, k=100)[1] == 400
    # given values above the caps are kept: adapting never lowers what was asked for
    big = ApproximateConfig(n_probe=100, n_candidates=5_000)
    assert big.effective(1_000_000, 10_000_000, k=10) == (100, 5_000)
    # an empty corpus still yields usable values
    assert config.effective(0, 0, k=10) == (8, 1)


def test_given_values_are_floors_and_adaptive_false_uses_them_as_given() -> None:
    small = ApproximateConfig(n_probe=2, n_candidates=64)
    adapted = small.effective(*TWOWIKI, k=5)
    assert adapted[0] >= 2 and adapted[1] >= 64
    assert adapted != (2, 64)
    fixed = ApproximateConfig(n_probe=2, n_candidates=64, adaptive=False)
    assert fixed.effective(*TWOWIKI, k=5) == (2, 64)
    assert fixed.effective(*TWOWIKI, k=50) == (2, 200)  # still at least 4 * k


def test_one_search_values_win() -> None:
    config = ApproximateConfig()
    assert config.effective(*TWOWIKI, k=10, n_probe=3) == (3, 439)
    assert config.effective(*TWOWIKI, k=10, n_candidates=50) == (24, 50)
    assert config.effective(*TWOWIKI, k=10, n_probe=3, n_candidates=50) == (3, 50)


def test_centroids_for_long_documents_follow_the_token_count_alone() -> None:
    config, blind = ApproximateConfig(), ApproximateConfig(adaptive=False)
    assert config.centroids_for(SCIFACT[1], SCIFACT[0]) == blind.centroids_for(SCIFACT[1]) == 4096
    assert config.centroids_for(TWOWIKI[1], TWOWIKI[0]) == 4096
    # without the document count the length cannot count: the length-blind rule
    assert config.centroids_for(TWOWIKI[1] // 2) == blind.centroids_for(TWOWIKI[1] // 2, TWOWIKI[0] // 2) == 2048


def test_short_documents_get_more_centroids_at_most_twice() -> None:
    config, blind = ApproximateConfig(), ApproximateConfig(adaptive=False)
    assert config.centroids_for(TWOWIKI[1] // 2, TWOWIKI[0] // 2) == 4096  # half of 2Wiki: not 2,048
    for n_tokens in (10_000, 300_000, 3_000_000, 30_000_000):
        previous = 0
        for mean_tokens in (1_000, 300, 150, 75, 30, 10, 1):
            count = config.centroids_for(n_tokens, max(1, n_tokens // mean_tokens))
            assert previous <= count <= 2 * blind.centroids_for(n_tokens) + 1, (n_tokens, mean_tokens, count)
            assert count <= n_tokens
            previous = count


def test_larger_corpora_never_get_fewer_centroids() -> None:
    config = ApproximateConfig()
    for mean_tokens in (10, 100, 300):
        counts = [config.centroids_for(n * mean_tokens, n) for n in (10, 1_000, 100_000, 10_000_000)]
        assert counts == sorted(counts)


def test_given_centroid_count_wins() -> None:
    assert ApproximateConfig(n_centroids=300).centroids_for(TWOWIKI[1], TWOWIKI[0]) == 300
    assert ApproximateConfig(n_centroids=300).centroids_for(100, 10) == 100  # not more than tokens


def test_fit_uses_the_document_count() -> None:
    vectors = np.random.default_rng(0).standard_normal((2_000, 8)).astype(np.float32)
    config = ApproximateConfig(kmeans_iterations=1)
    assert len(CentroidIndex.fit(vectors, config).centroids) == 128
    assert len(CentroidIndex.fit(vectors, config, n_docs=200).centroids) == 256  # 10 tokens per document


def test_adaptive_survives_a_manifest_roundtrip() -> None:
    config = ApproximateConfig(n_probe=4, adaptive=False)
    assert ApproximateConfig(**dataclasses.asdict(config)) == config
    # a manifest written before the flag existed loads as adaptive
    old = {k: v for k, v in dataclasses.asdict(ApproximateConfig()).items() if k != "adaptive"}
    assert ApproximateConfig(**old).adaptive is True


@pytest.mark.parametrize(
    ("kwargs", "args"),
    [
        ({"adaptive": 1}, None),
        ({"adaptive": "yes"}, None),
        ({}, (-1, 10, 10)),
        ({}, (10, 10.5, 10)),
        ({}, (10, 100, True)),
    ],
)
def test_bad_values_are_refused(kwargs: dict, args: tuple | None) -> None:
    with pytest.raises(InvalidInputError):
        config = ApproximateConfig(**kwargs)
        assert args is not None
        config.effective(*args)


def test_a_compressed_store_rescores_half_its_candidates_unless_told() -> None:
    config = ApproximateConfig()
    assert config.rescore_for(256, 10) == 128
    assert config.rescore_for(60, 10) == 40  # at least 4 * k ...
    assert config.rescore_for(30, 10) == 30  # ... and at most the candidates
    assert ApproximateConfig(n_rescore=200).rescore_for(256, 10) == 200
    for bad in (0, -3, 2.5, True):
        with pytest.raises(InvalidInputError, match="n_rescore"):
            ApproximateConfig(n_rescore=bad)  # type: ignore[arg-type]
