"""Retrieval metrics (checked against direct ir_measures calls and by hand) and SQuAD-style answer metrics."""

from __future__ import annotations

import json
import logging
import math
import subprocess
import sys

import ir_measures
import pytest

from ragplug.errors import EvaluationError, InvalidInputError
from ragplug.evaluators.answers import exact_match, extract_label, label_accuracy, normalize_answer, token_f1
from ragplug.evaluators.metrics import RETRIEVAL_METRICS, check_retrieval_metrics, retrieval_scores

# Graded qrels over four queries; q2's run has a tie between a relevant and a non-relevant document.
QRELS = {
    "q1": {"d1": 2, "d2": 1, "d3": 0, "d9": 1},
    "q2": {"d4": 1, "d5": 2},
    "q3": {"d6": 3},
    "q4": {"d7": 1, "d8": 1},
}
RUN = {
    "q1": {"d3": 9.0, "d1": 8.0, "d5": 7.0, "d2": 6.0, "d0": 5.0, "d9": 1.0},
    "q2": {"d4": 3.0, "d6": 3.0, "d5": 2.0, "d1": 1.0},
    "q3": {"d1": 4.0, "d2": 3.0, "d3": 2.0, "d4": 1.5, "d5": 1.2, "d6": 1.0},
    "q4": {"d8": 2.0, "d7": 1.0},
}
OURS_TO_IR = {
    "hit@1": "Success@1",
    "hit@3": "Success@3",
    "recall@3": "R@3",
    "precision@2": "P@2",
    "mrr": "RR",
    "mrr@2": "RR@2",
    "map": "AP",
    "map@3": "AP@3",
    "ndcg@3": "nDCG@3",
    "ndcg@10": "nDCG@10",
}


def _direct(measure: str, qrels: dict, run: dict) -> dict[str, float]:
    return {m.query_id: m.value for m in ir_measures.iter_calc([ir_measures.parse_measure(measure)], qrels, run)}


def test_every_metric_matches_a_direct_ir_measures_call() -> None:
    scores = retrieval_scores(RUN, QRELS, [*OURS_TO_IR, "all_gold@3", "all_gold@6"])
    for ours, theirs in OURS_TO_IR.items():
        expected = _direct(theirs, QRELS, RUN)
        assert scores.per_query[ours] == pytest.approx(expected), ours
        assert scores.means[ours] == pytest.approx(sum(expected.values()) / 4), ours
    for k in (3, 6):
        recall = _direct(f"R@{k}", QRELS, RUN)
        assert scores.per_query[f"all_gold@{k}"] == {q: float(r == 1.0) for q, r in recall.items()}
    assert scores.per_query["all_gold@6"] == {"q1": 1.0, "q2": 1.0, "q3": 1.0, "q4": 1.0}
    assert scores.per_query["all_gold@3"] == {"q1": 0.0, "q2": 1.0, "q3": 0.0, "q4": 1.0}
    assert scores.skipped == {}


def test_ties_are_broken_as_trec_eval_does() -> None:
    # d6 and d4 tie at 3.0; trec_eval orders ties by doc id descending, so d6 (non-relevant) comes first.
    scores = retrieval_scores(RUN, QRELS, ["hit@1", "mrr"])
    assert scores.per_query["hit@1"]["q2"] == 0.0
    assert scores.per_query["mrr"]["q2"] == 0.5


def test_a_ranked_list_scores_as_descending_scores_by_position() -> None:
    ranked = {q: sorted(docs, key=lambda d: (-docs[d], d)) for q, docs in RUN.items()}
    as_scores = {q: {d: float(len(docs) - i) for i, d in enumerate(docs)} for q, docs in ranked.items()}
    scores = retrieval_scores(ranked, QRELS, ["ndcg@3", "map", "mrr"])
    assert scores.per_query["ndcg@3"] == pytest.approx(_direct("nDCG@3", QRELS, as_scores))
    assert scores.per_query["map"] == pytest.approx(_direct("AP", QRELS, as_scores))
    # Position wins over the doc-id tie-break: q2 ranks d4 (relevant) before d6 here.
    assert scores.per_query["mrr"]["q2"] == 1.0


def test_hand_checkable_cases() -> None:
    qrels = {"a": {"x": 3, "y": 2, "z": 1}, "b": {"u": 1}}
    perfect = retrieval_scores({"a": ["x", "y", "z"], "b": ["u", "v"]}, qrels, ["ndcg@10", "hit@1", "map", "mrr"])
    assert perfect.means == {"ndcg@10": 1.0, "hit@1": 1.0, "map": 1.0, "mrr": 1.0}
    second = retrieval_scores({"a": ["w", "x"], "b": ["v", "w", "u"]}, qrels, ["hit@1", "hit@2", "mrr", "recall@2"])
    assert second.per_query["hit@1"] == {"a": 0.0, "b": 0.0}
    assert second.per_query["hit@2"] == {"a": 1.0, "b": 0.0}
    assert second.per_query["mrr"] == {"a": 0.5, "b": pytest.approx(1 / 3)}
    assert second.per_query["recall@2"] == {"a": pytest.approx(1 / 3), "b": 0.0}
    assert second.means["mrr"] == pytest.approx((0.5 + 1 / 3) / 2)


def test_collection_qrels_have_grade_one_and_negative_grades_are_not_relevant() -> None:
    as_set = retrieval_scores({"q": ["a", "b"]}, {"q": {"b"}}, ["ndcg@2", "mrr"])
    as_grades = retrieval_scores({"q": ["a", "b"]}, {"q": {"a": -1, "b": 1}}, ["ndcg@2", "mrr"])
    assert as_set.means == as_grades.means
    assert as_set.means["mrr"] == 0.5


def test_a_query_the_run_missed_scores_zero_and_counts_in_the_means() -> None:
    qrels = {"q1": {"d1": 1}, "q2": {"d2": 1}, "q3": ["d3"]}
    scores = retrieval_scores({"q1": ["d1"], "q3": []}, qrels, ["hit@1", "ndcg@10", "mrr", "all_gold@5"])
    for metric in ("hit@1", "ndcg@10", "mrr", "all_gold@5"):
        assert scores.per_query[metric] == {"q1": 1.0, "q2": 0.0, "q3": 0.0}
        assert scores.means[metric] == pytest.approx(1 / 3)
    assert scores.skipped == {}


def test_unscorable_queries_are_skipped_with_a_reason_and_one_warning(caplog: pytest.LogCaptureFixture) -> None:
    qrels = {"q1": {"d1": 1}, "q2": {"d2": 0, "d3": -1}}
    run = {"q1": ["d1"], "q2": ["d2"], "extra": ["d1"]}
    with caplog.at_level(logging.WARNING, logger="ragplug.evaluators.metrics"):
        scores = retrieval_scores(run, qrels, ["hit@1"])
    assert scores.per_query == {"hit@1": {"q1": 1.0}}
    assert scores.means == {"hit@1": 1.0}
    assert set(scores.skipped) == {"q2", "extra"}
    assert "not in the qrels" in scores.skipped["extra"]
    assert "no relevant document" in scores.skipped["q2"]
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "2 of 3 queries" in warnings[0].getMessage()


def test_to_dict_is_plain_json_and_means_are_finite() -> None:
    scores = retrieval_scores(RUN, QRELS)
    data = json.loads(json.dumps(scores.to_dict()))
    assert set(data) == {"per_query", "means", "skipped"}
    assert set(data["means"]) == {"hit@1", "hit@5", "recall@5", "mrr", "ndcg@10", "all_gold@5"}
    assert all(math.isfinite(v) for v in scores.means.values())


def test_errors_name_the_problem() -> None:
    with pytest.raises(InvalidInputError, match=r"run\['q7'\] ranks document 'a' twice"):
        retrieval_scores({"q7": ["a", "b", "a"]}, {"q7": ["a"]})
    with pytest.raises(InvalidInputError, match=r"unknown retrieval metric 'ndcg'.*ndcg@k.*all_gold@k"):
        retrieval_scores(RUN, QRELS, ["ndcg"])
    for bad in ("ndcg@0", "hit@-1", "ndcg@01", "NDCG@10", "f1", "recall"):
        with pytest.raises(InvalidInputError, match="accepted"):
            check_retrieval_metrics([bad])
    with pytest.raises(InvalidInputError, match="no metric"):
        retrieval_scores(RUN, QRELS, [])
    with pytest.raises(InvalidInputError, match="qrels are empty"):
        retrieval_scores(RUN, {})
    with pytest.raises(EvaluationError, match="no query can be scored"):
        retrieval_scores({"q": ["a"]}, {"q": {"a": 0}, "r": {}})
    with pytest.raises(InvalidInputError, match=r"qrels\['q'\]\['a'\] must be an int grade"):
        retrieval_scores({"q": ["a"]}, {"q": {"a": 1.5}})
    with pytest.raises(InvalidInputError, match=r"run\['q'\]\['a'\] must be a number"):
        retrieval_scores({"q": {"a": float("nan")}}, {"q": ["a"]})
    with pytest.raises(InvalidInputError, match=r"run\['q'\] must be a ranked list"):
        retrieval_scores({"q": "abc"}, {"q": ["a"]})
    with pytest.raises(InvalidInputError, match="query id must be a non-empty string"):
        retrieval_scores({1: ["a"]}, {"q": ["a"]})  # type: ignore[arg-type]


def test_metric_names_are_checked_and_deduplicated() -> None:
    assert check_retrieval_metrics(["ndcg@10", "mrr", "ndcg@10", "map@5", "all_gold@2"]) == (
        "ndcg@10",
        "mrr",
        "map@5",
        "all_gold@2",
    )
    assert "all_gold@k" in RETRIEVAL_METRICS and "mrr" in RETRIEVAL_METRICS


def test_importing_the_metrics_module_does_not_import_ir_measures() -> None:
    code = "import sys, ragplug.evaluators.metrics, ragplug.evaluators.answers; print('ir_measures' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


# --- answers -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("The Eiffel Tower!", "eiffel tower"),
        ("  A   cat,\tan apple;  the END. ", "cat apple end"),
        ("Theatre and anchor", "theatre and anchor"),  # articles only as whole words
        ("U.S.A.", "usa"),
        ("", ""),
    ],
)
def test_normalize_answer_is_squad_normalisation(text: str, expected: str) -> None:
    assert normalize_answer(text) == expected


def test_exact_match_takes_the_best_reference() -> None:
    assert exact_match("The Eiffel Tower", "eiffel tower.") == 1.0
    assert exact_match("Paris", ["London", "paris!"]) == 1.0
    assert exact_match("Paris, France", ("Paris",)) == 0.0


def test_token_f1_is_squad_f1() -> None:
    # pred tokens: [green, apple, pie], gold: [apple, pie, with, cream] -> P 2/3, R 2/4, F1 4/7
    assert token_f1("the green apple pie", "Apple pie with cream") == pytest.approx(4 / 7)
    assert token_f1("apple apple", "apple") == pytest.approx(2 * 0.5 * 1 / 1.5)  # multiplicity counts
    assert token_f1("nothing shared", "apple") == 0.0
    assert token_f1("Apple pie", ["pear", "apple pie", "apple"]) == 1.0
    assert token_f1("the", "a") == 1.0  # both empty after normalisation
    assert token_f1("the", "apple") == 0.0


def test_answer_metrics_reject_bad_types() -> None:
    with pytest.raises(InvalidInputError, match="must be a string"):
        exact_match(None, "a")  # type: ignore[arg-type]
    with pytest.raises(InvalidInputError, match="reference answer is missing"):
        token_f1("a", None)  # type: ignore[arg-type]
    with pytest.raises(InvalidInputError, match="non-empty sequence"):
        exact_match("a", [])
    with pytest.raises(InvalidInputError, match="each reference must be a string"):
        token_f1("a", ["a", 3])  # type: ignore[list-item]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Yes, because the trial shows it.", "yes"),
        ("**Maybe.** The evidence is mixed", "maybe"),
        ("no", "no"),
        ("NO!", "no"),
        ("  yes\n\nExplanation: ...", "yes"),
        ("Nothing suggests that", None),  # a label must be a whole word
        ("I think yes", None),  # only the start counts
        ("Answer: no", None),
        ("", None),
    ],
)
def test_extract_label_reads_the_first_word(text: str, expected: str | None) -> None:
    assert extract_label(text) == expected


def test_extract_label_with_custom_and_multi_word_labels() -> None:
    labels = ("Supported", "Refuted", "Not enough info", "Not")
    assert extract_label("not enough info: the claim is vague", labels) == "Not enough info"
    assert extract_label("Not really", labels) == "Not"
    assert extract_label("refuted.", labels) == "Refuted"
    with pytest.raises(InvalidInputError, match="empty after normalisation"):
        extract_label("yes", ["yes", "the"])
    with pytest.raises(InvalidInputError, match="labels must be"):
        extract_label("yes", "yes")


def test_label_accuracy() -> None:
    predictions = ["Yes. Because...", "no", "It depends", "maybe", "YES"]
    references = ["yes", "No", "maybe", "no", "yes"]
    assert label_accuracy(predictions, references) == pytest.approx(3 / 5)
    with pytest.raises(InvalidInputError, match="2 predictions for 1 references"):
        label_accuracy(["yes", "no"], ["yes"])
    with pytest.raises(InvalidInputError, match=r"reference 1 \('yes, surely'\) is not one of the labels"):
        label_accuracy(["yes", "no"], ["yes", "yes, surely"])
    with pytest.raises(InvalidInputError, match="reference 0 is missing"):
        label_accuracy(["yes"], [None])  # type: ignore[list-item]
    with pytest.raises(InvalidInputError, match="no predictions"):
        label_accuracy([], [])
    with pytest.raises(InvalidInputError, match="must be a string"):
        label_accuracy([3], ["yes"])  # type: ignore[list-item]
