"""Evaluation reports: bootstrap intervals, paired permutation tests, refusals of bad scores, and the JSON,
Markdown and PNG files a report writes."""

from __future__ import annotations

import json
import os
import struct
from pathlib import Path

import numpy as np
import pytest

from ragplug.errors import EvaluationError, InvalidInputError
from ragplug.evaluators.report import (
    REPORT_KIND,
    Estimate,
    Report,
    compare_paired,
    render_markdown,
    render_png,
    summarize,
)

GROUPS = ("trained", "updated", "unseen")


def three_arms(n: int = 60) -> tuple[dict[str, dict[str, dict[str, float]]], dict[str, str]]:
    """Arms ``rag`` (weak), ``lora`` (better) and ``both`` (best, missing its last 6 items on ``em``)."""
    rng = np.random.default_rng(7)
    items = [f"q{i:03d}" for i in range(n)]
    groups = {item: GROUPS[i % 3] for i, item in enumerate(items)}

    def arm(p: float, power: float, drop: int = 0) -> dict[str, dict[str, float]]:
        return {
            "em": {q: float(rng.random() < p) for q in items[: n - drop]},
            "f1": {q: float(rng.random() ** power) for q in items},
        }

    return {"rag": arm(0.4, 1.0), "lora": arm(0.75, 0.5), "both": arm(0.9, 0.3, drop=6)}, groups


def report(**kwargs: object) -> Report:
    scores, groups = three_arms()
    options: dict[str, object] = {
        "groups": groups,
        "baseline": "rag",
        "bounds": (0.0, 1.0),
        "costs": {"lora": {"train_s": 812.5, "adapter_mb": 16.0}, "rag": {"latency_s": 0.42}},
        "metadata": {"machine": "test", "versions": {"ragplug": "0"}},
        "resamples": 500,
    }
    return Report(scores, **(options | kwargs))  # type: ignore[arg-type]


# --- summarize


def test_summarize_interval_contains_the_mean_and_shrinks_with_n() -> None:
    rng = np.random.default_rng(0)
    small = summarize(rng.random(20).tolist())
    large = summarize(rng.random(2000).tolist())
    for est in (small, large):
        assert est.low <= est.mean <= est.high
        assert est.low < est.high
    assert (large.high - large.low) < (small.high - small.low) / 4
    assert small.n == 20 and large.n == 2000
    assert large.low < 0.5 < large.high  # uniform(0, 1) has mean 0.5


def test_summarize_constant_scores_give_a_point_interval() -> None:
    est = summarize([0.7] * 12)
    assert est == Estimate(mean=pytest.approx(0.7), low=est.mean, high=est.mean, n=12)
    assert summarize([1.0]) == Estimate(1.0, 1.0, 1.0, 1)


def test_summarize_is_seeded_and_reads_mappings() -> None:
    values = {f"q{i}": float(i % 3 == 0) for i in range(40)}
    assert summarize(values, seed=3) == summarize(values, seed=3)
    assert summarize(values).mean == pytest.approx(14 / 40)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), "x", None])
def test_summarize_refuses_a_non_finite_score_naming_it(bad: object) -> None:
    with pytest.raises(EvaluationError, match="'q2'"):
        summarize({"q0": 0.1, "q1": 0.2, "q2": bad})  # type: ignore[dict-item]
    with pytest.raises(EvaluationError, match="item 1"):
        summarize([0.1, bad])  # type: ignore[list-item]


def test_summarize_refuses_nothing_and_bad_options() -> None:
    with pytest.raises(EvaluationError):
        summarize([])
    with pytest.raises(InvalidInputError, match="confidence"):
        summarize([0.1, 0.2], confidence=1.5)
    with pytest.raises(InvalidInputError, match="resamples"):
        summarize([0.1, 0.2], resamples=0)


# --- compare_paired


def test_clearly_different_systems_give_a_small_p_value() -> None:
    rng = np.random.default_rng(1)
    a = {f"q{i}": float(x) for i, x in enumerate(rng.uniform(0.2, 0.6, 40))}
    b = {k: v + 0.3 + float(rng.normal(0, 0.05)) for k, v in a.items()}
    test = compare_paired(a, b)
    assert test.p_value < 0.05
    assert 0.0 < test.difference.low <= test.difference.mean <= test.difference.high
    assert test.difference.mean == pytest.approx(np.mean([b[k] - a[k] for k in a]))
    assert (test.difference.n, test.only_a, test.only_b) == (40, 0, 0)
    # b − a: swapping the sides flips the sign, not the p-value.
    swapped = compare_paired(b, a)
    assert swapped.difference.mean == pytest.approx(-test.difference.mean)
    assert swapped.p_value == pytest.approx(test.p_value)


def test_identical_systems_give_p_one_and_a_zero_difference() -> None:
    a = {f"q{i}": float(i % 2) for i in range(25)}
    test = compare_paired(a, dict(a))
    assert test.p_value == 1.0
    assert test.difference == Estimate(0.0, 0.0, 0.0, 25)


def test_small_samples_are_tested_exactly() -> None:
    # 6 items, every difference +0.3: 2 of the 2**6 sign patterns are as extreme (two-sided).
    a = {f"q{i}": 0.2 for i in range(6)}
    b = {k: 0.5 for k in a}
    assert compare_paired(a, b).p_value == pytest.approx(2 / 64)


def test_unpaired_items_are_counted_and_left_out() -> None:
    a = {"q1": 0.0, "q2": 0.0, "q3": 1.0, "only-a": 1.0}
    b = {"q1": 1.0, "q2": 1.0, "q3": 1.0, "only-b1": 0.0, "only-b2": 0.0}
    test = compare_paired(a, b)
    assert (test.only_a, test.only_b, test.difference.n) == (1, 2, 3)
    assert test.difference.mean == pytest.approx(2 / 3)


def test_no_item_in_common_is_refused() -> None:
    with pytest.raises(EvaluationError, match="nothing to pair"):
        compare_paired({"a": 1.0}, {"b": 1.0})


def test_compare_paired_names_a_nan_item() -> None:
    with pytest.raises(EvaluationError, match="b, item 'q2'"):
        compare_paired({"q1": 0.0, "q2": 1.0}, {"q1": 0.0, "q2": float("nan")})


# --- Report


def test_report_estimates_overall_and_per_group() -> None:
    scores, groups = three_arms()
    data = report().to_dict()
    assert data["kind"] == REPORT_KIND
    assert data["arms"] == ["rag", "lora", "both"]
    assert data["metrics"] == ["em", "f1"]
    assert data["groups"] == list(GROUPS)
    for arm, by_metric in scores.items():
        for metric, values in by_metric.items():
            cell = data["estimates"][arm][metric]
            assert cell["overall"]["mean"] == pytest.approx(np.mean(list(values.values())))
            assert cell["overall"]["n"] == len(values)
            for group in GROUPS:
                inside = [v for k, v in values.items() if groups[k] == group]
                est = cell["groups"][group]
                assert est["n"] == len(inside)
                assert est["mean"] == pytest.approx(np.mean(inside))
                assert est["low"] <= est["mean"] <= est["high"]
    assert data["estimates"]["both"]["em"]["overall"]["n"] == 54


def test_report_paired_comparisons_count_unpaired_items() -> None:
    rows = report().to_dict()["comparisons"]["rows"]
    assert {(r["metric"], r["arm"]) for r in rows} == {(m, a) for m in ("em", "f1") for a in ("lora", "both")}
    assert len(rows) == 2 * 2 * 4  # metrics × arms × (overall + 3 groups)
    both_em = next(r for r in rows if (r["metric"], r["arm"], r["group"]) == ("em", "both", None))
    assert (both_em["difference"]["n"], both_em["only_baseline"], both_em["only_arm"]) == (54, 6, 0)
    assert both_em["p_value"] < 0.05
    assert report(baseline=None).to_dict()["comparisons"] is None


def test_group_without_shared_items_has_an_empty_comparison_row() -> None:
    scores = {"a": {"m": {"x1": 0.1, "x2": 0.4, "y1": 0.5}}, "b": {"m": {"x1": 0.3, "x2": 0.9, "y2": 0.5}}}
    data = Report(scores, groups={"x1": "x", "x2": "x", "y1": "y", "y2": "y"}, baseline="a").to_dict()
    row_y = next(r for r in data["comparisons"]["rows"] if r["group"] == "y")
    assert row_y["difference"] is None and row_y["p_value"] is None
    assert (row_y["only_baseline"], row_y["only_arm"]) == (1, 1)
    assert "| m | b | y | — | — | 0 | 1 / 1 |" in render_markdown(data)


def test_report_refuses_nan_naming_arm_metric_and_item() -> None:
    scores, groups = three_arms()
    scores["lora"]["f1"]["q017"] = float("nan")
    with pytest.raises(EvaluationError, match=r"arm 'lora', metric 'f1', item 'q017'"):
        Report(scores, groups=groups)


def test_report_refuses_scores_out_of_bounds() -> None:
    scores = {"a": {"em": {"q1": 1.0, "q2": 1.5}, "latency": {"q1": 3.0, "q2": 4.0}}}
    with pytest.raises(EvaluationError, match=r"metric 'em', item 'q2'.*outside \[0.0, 1.0\]"):
        Report(scores, bounds={"em": (0.0, 1.0)})
    Report(scores)  # no bounds: only finiteness is checked
    with pytest.raises(InvalidInputError, match="bounds"):
        Report(scores, bounds=(1.0, 0.0))


@pytest.mark.parametrize(
    ("scores", "match"),
    [
        ({}, "empty report"),
        ({"a": {}, "b": {}}, "empty report"),
        ({"a": {"em": {"q": 1.0}}, "b": {"em": {}}}, "arm 'b' has no items for metric 'em'"),
        ({"a": {"em": {"q": 1.0}}, "b": {"f1": {"q": 1.0}}}, "arm 'a' has no items for metric 'f1'"),
    ],
)
def test_report_refuses_missing_scores(scores: dict[str, dict[str, dict[str, float]]], match: str) -> None:
    with pytest.raises(EvaluationError, match=match):
        Report(scores)


def test_report_refuses_bad_arguments() -> None:
    scores = {"a": {"em": {"q1": 1.0, "q2": 0.0}}}
    with pytest.raises(EvaluationError, match="item 'q2' has no group label"):
        Report(scores, groups={"q1": "trained"})
    with pytest.raises(InvalidInputError, match="baseline 'z'"):
        Report(scores, baseline="z")
    with pytest.raises(InvalidInputError, match="arm 'z'"):
        Report(scores, costs={"z": {"train_s": 1.0}})
    with pytest.raises(EvaluationError, match="arm 'a', cost 'train_s'"):
        Report(scores, costs={"a": {"train_s": float("inf")}})
    with pytest.raises(InvalidInputError, match="metadata"):
        Report(scores, metadata={"when": object()})
    with pytest.raises(InvalidInputError, match="metadata"):
        Report(scores, metadata={"loss": float("nan")})


def test_markdown_tables() -> None:
    md = report().to_markdown()
    data = report().to_dict()
    assert "## em" in md and "## f1" in md
    # f1: every arm has all 60 items, so n goes in the header; em: sizes differ, so n goes in each cell.
    assert "| arm | overall (n=60) | trained (n=20) | updated (n=20) | unseen (n=20) |" in md
    f1 = data["estimates"]["lora"]["f1"]["overall"]
    assert f"| lora | {f1['mean']:.3f} [{f1['low']:.3f}, {f1['high']:.3f}] |" in md
    em = data["estimates"]["both"]["em"]["overall"]
    assert f"| both | {em['mean']:.3f} [{em['low']:.3f}, {em['high']:.3f}] (n=54) |" in md
    assert "## Costs" in md and "| arm | train_s | adapter_mb | latency_s |" in md
    assert "| lora | 812.5 | 16 | — |" in md
    assert "## Paired comparison with `rag`" in md
    assert "| em | both | overall |" in md and "| 54 | 6 / 0 |" in md
    assert '"machine": "test"' in md
    assert render_markdown(data) == md


def test_markdown_escapes_pipes_in_names() -> None:
    md = Report({"a|b": {"m": {"q": 0.5}}}).to_markdown()
    assert "| a\\|b | 0.500 [0.500, 0.500] |" in md


def test_render_refuses_foreign_data() -> None:
    with pytest.raises(InvalidInputError, match="not a report"):
        render_markdown({"kind": "something-else"})
    with pytest.raises(InvalidInputError, match="not a report"):
        render_png({"format": 1})
    broken = report().to_dict()
    del broken["estimates"]
    with pytest.raises(InvalidInputError, match="malformed"):
        render_markdown(broken)


def png_size(data: bytes) -> tuple[int, int]:
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    assert data[12:16] == b"IHDR"
    width, height = struct.unpack(">II", data[16:24])
    return width, height


def test_write_json_markdown_and_png(tmp_path: Path) -> None:
    rep = report()
    paths = rep.write(tmp_path / "out", "rag-vs-lora")
    assert paths == {s: tmp_path / "out" / f"rag-vs-lora.{s}" for s in ("json", "md", "png")}
    assert sorted(os.listdir(tmp_path / "out")) == ["rag-vs-lora.json", "rag-vs-lora.md", "rag-vs-lora.png"]

    def no_constants(name: str) -> None:
        raise AssertionError(f"{name} in JSON")

    data = json.loads(paths["json"].read_text(encoding="utf-8"), parse_constant=no_constants)
    assert data == rep.to_dict()
    md = paths["md"].read_text(encoding="utf-8")
    assert md == render_markdown(data)
    assert "| rag | " in md and "| lora | " in md and "| both | " in md
    png = paths["png"].read_bytes()
    width, height = png_size(png)
    assert width > 600 and height > 300
    assert len(png) > 10_000
    assert render_png(data) == png  # deterministic, and redrawn from the JSON alone


def test_write_replaces_files_and_leaves_no_temporaries_on_failure(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    rep = Report({"a": {"m": {"q1": 0.2, "q2": 0.8}}})
    rep.write(tmp_path, "r")
    before = (tmp_path / "r.json").read_bytes()
    rep.write(tmp_path, "r")  # over existing files
    assert (tmp_path / "r.json").read_bytes() == before
    assert sorted(os.listdir(tmp_path)) == ["r.json", "r.md", "r.png"]

    def fail(src: str, dst: object) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", fail)
    with pytest.raises(OSError, match="disk full"):
        rep.write(tmp_path, "other")
    assert sorted(os.listdir(tmp_path)) == ["r.json", "r.md", "r.png"]


@pytest.mark.parametrize("name", ["", "a/b", "../up", ".hidden"])
def test_write_refuses_a_name_that_is_not_a_plain_file_name(tmp_path: Path, name: str) -> None:
    with pytest.raises(InvalidInputError, match="name"):
        Report({"a": {"m": {"q": 1.0}}}).write(tmp_path, name)
