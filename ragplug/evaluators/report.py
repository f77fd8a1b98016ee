"""Evaluation reports: per-item scores of several systems ("arms") as means with bootstrap confidence intervals,
overall and per group of items (``"trained"``, ``"updated"``, ``"unseen"``), paired tests against a baseline
arm, written as JSON, Markdown and a PNG. A NaN score is refused (:class:`~ragplug.errors.EvaluationError`
naming arm, metric and item), never averaged. :meth:`Report.to_dict` is the report as plain JSON data, which
:func:`render_markdown` and :func:`render_png` draw again without recomputing; :meth:`Report.write` writes the
three files, each through a temporary file in the target folder renamed over the target.

Why these libraries: ``scipy.stats.bootstrap`` and ``permutation_test`` (the ``eval`` extra) are reviewed
implementations of both resampling methods; matplotlib draws on an Agg canvas of a ``Figure`` made here, so no
pyplot state (backend, current figure) of the caller changes.
"""

from __future__ import annotations

import io
import json
import math
import os
import tempfile
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, TypeAlias

import numpy as np
import numpy.typing as npt

from ragplug._extras import require
from ragplug.errors import EvaluationError, InvalidInputError

__all__ = [
    "REPORT_KIND",
    "Estimate",
    "PairedTest",
    "Report",
    "Scores",
    "compare_paired",
    "render_markdown",
    "render_png",
    "summarize",
]

#: The ``"kind"`` field of :meth:`Report.to_dict`; ``"format"`` is :data:`REPORT_FORMAT`.
REPORT_KIND = "ragplug-eval-report"
REPORT_FORMAT = 1

#: One arm's scores: ``{metric: {item_id: score}}``.
Scores: TypeAlias = Mapping[str, Mapping[str, float]]
Bounds: TypeAlias = tuple[float, float]

_CI_METHOD = "BCa bootstrap"
_TEST = "two-sided sign-flip permutation test on the mean difference"
# Largest resamples × items block scipy builds at once (bootstrap and jackknife rows): about 32 MB of float64.
_BATCH_CELLS = 4_000_000
_COLOURS = ("#4c72b0", "#dd8452", "#55a868", "#c44e52", "#8172b3", "#937860", "#da8bc3", "#8c8c8c", "#ccb974")


@dataclass(frozen=True)
class Estimate:
    """The mean of ``n`` scores and its confidence interval ``[low, high]``."""

    mean: float
    low: float
    high: float
    n: int


@dataclass(frozen=True)
class PairedTest:
    """``b`` against ``a`` on the items both scored: ``difference`` is the mean of ``b − a`` with its confidence
    interval (its ``n`` is the number of paired items), ``p_value`` the two-sided sign-flip permutation test's;
    ``only_a`` and ``only_b`` count the unpaired items left out."""

    difference: Estimate
    p_value: float
    only_a: int
    only_b: int


def _stats() -> Any:
    require("scipy", "eval")
    from scipy import stats

    return stats


def _check_options(confidence: float, resamples: int) -> None:
    if not 0.0 < confidence < 1.0 or resamples < 1:
        msg = f"confidence must be in (0, 1) and resamples >= 1, got confidence={confidence!r}, resamples={resamples!r}"
        raise InvalidInputError(msg)


def _checked(values: Mapping[Any, float] | Sequence[float], where: str = "item ") -> dict[Any, float]:
    """``values`` as floats by key (index for a sequence); a non-number or non-finite value raises, naming
    ``where`` and the key."""
    items = values.items() if isinstance(values, Mapping) else enumerate(values)
    out: dict[Any, float] = {}
    for key, value in items:
        try:
            score = float(value)
        except (TypeError, ValueError) as err:
            msg = f"{where}{key!r}: {value!r} is not a number"
            raise EvaluationError(msg) from err
        if not math.isfinite(score):
            msg = f"{where}{key!r}: {score} is not a finite number"
            raise EvaluationError(msg)
        out[key] = score
    return out


def _resampling(n: int, resamples: int, seed: int) -> dict[str, Any]:
    """The options both scipy resampling calls share: seeded, vectorised, in blocks of bounded size."""
    batch = max(1, min(resamples, _BATCH_CELLS // n))
    return {"n_resamples": resamples, "batch": batch, "vectorized": True, "random_state": np.random.default_rng(seed)}


def _estimate(data: npt.NDArray[np.float64], confidence: float, resamples: int, seed: int) -> Estimate:
    n = int(data.size)
    if n == 0:
        msg = "no scores to summarise"
        raise EvaluationError(msg)
    mean = float(np.mean(data))
    if float(np.ptp(data)) == 0.0:  # every resample has the same mean: scipy's BCa would give NaN
        return Estimate(mean, mean, mean, n)
    stats = _stats()
    for method in ("BCa", "percentile"):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # DegenerateDataWarning; handled by the fallback
            result = stats.bootstrap(
                (data,), np.mean, confidence_level=confidence, method=method, **_resampling(n, resamples, seed)
            )
        low, high = float(result.confidence_interval.low), float(result.confidence_interval.high)
        if math.isfinite(low) and math.isfinite(high):
            return Estimate(mean, low, high, n)
    msg = f"no bootstrap confidence interval for {n} scores with mean {mean}"  # not seen for finite data
    raise EvaluationError(msg)


def summarize(
    values: Mapping[Any, float] | Sequence[float], *, confidence: float = 0.95, resamples: int = 2000, seed: int = 0
) -> Estimate:
    """The mean of ``values`` and its ``confidence`` interval by ``scipy.stats.bootstrap`` (``seed`` fixes it).

    The interval is BCa (bias-corrected and accelerated), scipy's default: per-item scores are bounded and often
    skewed (a 0/1 exact match near 1.0), where the plain percentile interval is biased and under-covers; BCa
    corrects for bias and skew and is second-order accurate, for the price of a jackknife over the items (batched
    here, so memory stays bounded). All-equal scores give ``[mean, mean]`` (BCa is undefined there); should BCa
    still fail (every resample on one side of the mean), the percentile interval is given instead.

    A non-finite or non-numeric score raises :class:`~ragplug.errors.EvaluationError` naming its item (its key,
    or its index in a sequence); so does an empty ``values``."""
    _check_options(confidence, resamples)
    data = np.fromiter(_checked(values).values(), dtype=np.float64)
    return _estimate(data, confidence, resamples, seed)


def compare_paired(
    a: Mapping[Any, float],
    b: Mapping[Any, float],
    *,
    confidence: float = 0.95,
    resamples: int = 2000,
    seed: int = 0,
) -> PairedTest:
    """``b`` against ``a`` on the items both scored: the mean difference ``b − a`` with its bootstrap interval
    (as :func:`summarize`) and a two-sided p-value; items only one side has are counted, not used.

    The test is ``scipy.stats.permutation_test`` with ``permutation_type="samples"``: under the null hypothesis
    each item's difference is as likely to have either sign, so the signs are flipped at random. It was chosen
    over Wilcoxon's signed-rank test because it tests the very quantity reported (the mean difference, as the
    interval does) rather than ranks, and needs no rule for zero or tied differences, which are the common case
    with 0/1 scores (both arms right). It is exact while ``2**n <= resamples`` and otherwise randomised with
    ``seed``, its p-value never below ``1 / (resamples + 1)``. All-zero differences give ``p = 1.0``.

    No item in common raises :class:`~ragplug.errors.EvaluationError`, as does a non-finite score."""
    _check_options(confidence, resamples)
    left, right = _checked(a, "a, item "), _checked(b, "b, item ")
    common = [item for item in left if item in right]
    if not common:
        msg = f"no item is scored in both a ({len(left)} items) and b ({len(right)} items): nothing to pair"
        raise EvaluationError(msg)
    diff = np.array([right[item] - left[item] for item in common], dtype=np.float64)
    estimate = _estimate(diff, confidence, resamples, seed)
    p_value = 1.0
    if np.any(diff):
        result = _stats().permutation_test(
            (diff,), np.mean, permutation_type="samples", **_resampling(diff.size, resamples, seed)
        )
        p_value = min(1.0, float(result.pvalue))
    return PairedTest(estimate, p_value, len(left) - len(common), len(right) - len(common))


def _bounds(bounds: Bounds | Mapping[str, Bounds] | None, metrics: Sequence[str]) -> dict[str, Bounds]:
    if bounds is None:
        return {}
    pairs = dict(bounds) if isinstance(bounds, Mapping) else dict.fromkeys(metrics, bounds)
    out: dict[str, Bounds] = {}
    for metric, pair in pairs.items():
        low, high = (float(x) for x in pair)
        if not (math.isfinite(low) and math.isfinite(high) and low <= high):
            msg = f"bounds for metric {metric!r} must be finite (low, high) with low <= high, got {pair!r}"
            raise InvalidInputError(msg)
        out[metric] = (low, high)
    return out


class Report:
    """Several arms' scores summarised: built from ``{arm: {metric: {item_id: score}}}``.

    ``groups`` maps every scored item to a group label (estimates are then given overall and per group, groups
    in the order their labels first appear); ``costs`` are ``{arm: {cost_name: value}}`` (training time, adapter
    size, latency, prompt tokens); ``metadata`` is free JSON data (machine, versions, settings). With a
    ``baseline`` arm every other arm is compared to it by :func:`compare_paired`, overall and per group (the
    p-values are not adjusted for multiple comparisons). ``bounds`` is one ``(low, high)`` range for every
    metric, or a range per metric: a score outside it is refused (``None``: only finiteness is checked).

    Every arm must score every metric; an empty report, an arm without items for a metric, an item without a
    group label or a NaN, infinite or out-of-range score raise :class:`~ragplug.errors.EvaluationError` naming
    the arm, metric and item. Everything is computed here, once; the report is then read-only."""

    def __init__(
        self,
        scores: Mapping[str, Scores],
        *,
        groups: Mapping[str, str] | None = None,
        costs: Mapping[str, Mapping[str, float]] | None = None,
        metadata: Mapping[str, Any] | None = None,
        baseline: str | None = None,
        bounds: Bounds | Mapping[str, Bounds] | None = None,
        title: str = "Evaluation report",
        confidence: float = 0.95,
        resamples: int = 2000,
        seed: int = 0,
    ) -> None:
        _check_options(confidence, resamples)
        metrics = list(dict.fromkeys(metric for by_metric in scores.values() for metric in by_metric))
        if not metrics:
            msg = f"empty report: no scores in any arm (arms: {list(scores)!r})"
            raise EvaluationError(msg)
        if baseline is not None and baseline not in scores:
            msg = f"baseline {baseline!r} is not an arm; arms: {list(scores)!r}"
            raise InvalidInputError(msg)
        limits = _bounds(bounds, metrics)
        self._scores: dict[str, dict[str, dict[str, float]]] = {}
        for arm, by_metric in scores.items():
            self._scores[arm] = {}
            for metric in metrics:
                if not by_metric.get(metric):
                    msg = f"arm {arm!r} has no items for metric {metric!r}"
                    raise EvaluationError(msg)
                where = f"arm {arm!r}, metric {metric!r}, item "
                checked = _checked(by_metric[metric], where)
                for item, score in checked.items():
                    low, high = limits.get(metric, (-math.inf, math.inf))
                    if not low <= score <= high:
                        msg = f"{where}{item!r}: score {score} is outside [{low}, {high}]"
                        raise EvaluationError(msg)
                    if groups is not None and item not in groups:
                        msg = f"{where}{item!r} has no group label"
                        raise EvaluationError(msg)
                self._scores[arm][metric] = checked
        scored = {item for by_metric in self._scores.values() for values in by_metric.values() for item in values}
        self._groups = {item: str(label) for item, label in (groups or {}).items() if item in scored}
        for arm in costs or {}:
            if arm not in self._scores:
                msg = f"costs name arm {arm!r}, which has no scores; arms: {list(self._scores)!r}"
                raise InvalidInputError(msg)
        self._costs = {arm: _checked(named, f"arm {arm!r}, cost ") for arm, named in (costs or {}).items()}
        try:
            meta = json.loads(json.dumps(dict(metadata or {}), allow_nan=False))
        except (TypeError, ValueError) as err:
            msg = f"metadata must be JSON data (no NaN): {err}"
            raise InvalidInputError(msg) from err
        self._options = (confidence, resamples, seed)
        labels = list(dict.fromkeys(self._groups.values()))
        self._data: dict[str, Any] = {
            "kind": REPORT_KIND,
            "format": REPORT_FORMAT,
            "title": title,
            "confidence": confidence,
            "resamples": resamples,
            "seed": seed,
            "interval": _CI_METHOD,
            "arms": list(self._scores),
            "metrics": metrics,
            "groups": labels,
            "bounds": {metric: list(pair) for metric, pair in limits.items()},
            "estimates": {
                arm: {metric: self._by_scope(values, labels) for metric, values in by_metric.items()}
                for arm, by_metric in self._scores.items()
            },
            "comparisons": None if baseline is None else self._comparisons(baseline, metrics, labels),
            "costs": self._costs,
            "metadata": meta,
        }

    def _scope(self, values: Mapping[str, float], group: str | None) -> dict[str, float]:
        return {k: v for k, v in values.items() if group is None or self._groups[k] == group}

    def _by_scope(self, values: Mapping[str, float], labels: Sequence[str]) -> dict[str, Any]:
        def one(group: str | None) -> dict[str, Any] | None:
            data = np.fromiter(self._scope(values, group).values(), dtype=np.float64)
            return asdict(_estimate(data, *self._options)) if data.size else None

        return {"overall": one(None), "groups": {label: one(label) for label in labels}}

    def _comparisons(self, baseline: str, metrics: Sequence[str], labels: Sequence[str]) -> dict[str, Any]:
        confidence, resamples, seed = self._options
        rows = []
        for metric in metrics:
            for arm in self._scores:
                if arm == baseline:
                    continue
                for group in [None, *labels]:
                    a = self._scope(self._scores[baseline][metric], group)
                    b = self._scope(self._scores[arm][metric], group)
                    row: dict[str, Any] = {"metric": metric, "arm": arm, "group": group}
                    if a.keys() & b.keys():
                        test = compare_paired(a, b, confidence=confidence, resamples=resamples, seed=seed)
                        row |= {"difference": asdict(test.difference), "p_value": test.p_value}
                        row |= {"only_baseline": test.only_a, "only_arm": test.only_b}
                    elif group is None:
                        msg = f"metric {metric!r}: arm {arm!r} and baseline {baseline!r} share no item"
                        raise EvaluationError(msg)
                    else:
                        row |= {"difference": None, "p_value": None, "only_baseline": len(a), "only_arm": len(b)}
                    rows.append(row)
        return {"baseline": baseline, "test": _TEST, "rows": rows}

    def to_dict(self) -> dict[str, Any]:
        """The report as JSON data: ``kind``, ``format``, ``title``, the options, ``arms``, ``metrics``,
        ``groups``, ``bounds``, ``estimates[arm][metric]`` = ``{"overall": est, "groups": {label: est}}`` (``est``
        = ``{mean, low, high, n}``, or ``None`` where the arm has no item of that group), ``comparisons``
        (``None`` without a baseline, else ``baseline``, ``test`` and ``rows``), ``costs`` and ``metadata``."""
        copy: dict[str, Any] = json.loads(json.dumps(self._data, allow_nan=False))
        return copy

    def to_markdown(self) -> str:
        """:func:`render_markdown` of :meth:`to_dict`."""
        return render_markdown(self._data)

    def write(self, folder: str | os.PathLike[str], name: str) -> dict[str, Path]:
        """Write ``<name>.json``, ``<name>.md`` and ``<name>.png`` into ``folder`` (made if missing) and return
        their paths by suffix (``"json"``, ``"md"``, ``"png"``). All three are rendered before any is written;
        each is written to a temporary file in ``folder`` and renamed over its target."""
        if not name or Path(name).name != name or name.startswith("."):
            msg = f"name must be a plain file name without suffix, got {name!r}"
            raise InvalidInputError(msg)
        contents = {
            "json": (json.dumps(self._data, indent=2, ensure_ascii=False, allow_nan=False) + "\n").encode("utf-8"),
            "md": render_markdown(self._data).encode("utf-8"),
            "png": render_png(self._data),
        }
        target = Path(folder)
        target.mkdir(parents=True, exist_ok=True)
        return {suffix: _write_atomic(target / f"{name}.{suffix}", data) for suffix, data in contents.items()}


def _write_atomic(path: Path, data: bytes) -> Path:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def _checked_report(data: Mapping[str, Any]) -> None:
    if not isinstance(data, Mapping) or data.get("kind") != REPORT_KIND or data.get("format") != REPORT_FORMAT:
        found = (data.get("kind"), data.get("format")) if isinstance(data, Mapping) else type(data).__name__
        msg = f"not a report made by ragplug's Report.to_dict (kind, format: {found!r})"
        raise InvalidInputError(msg)


def _text(value: object) -> str:
    return str(value).replace("|", "\\|").replace("\n", " ")


def _cell(estimate: Mapping[str, Any] | None, n: bool = False) -> str:
    if estimate is None:
        return "—"
    text = f"{estimate['mean']:.3f} [{estimate['low']:.3f}, {estimate['high']:.3f}]"
    return f"{text} (n={estimate['n']})" if n else text


def _table(header: Sequence[str], rows: Sequence[Sequence[str]], right: int = 1) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] * right + ["---:"] * (len(header) - right)) + "|"]
    return lines + ["| " + " | ".join(row) + " |" for row in rows] + [""]


def _p(value: float | None) -> str:
    return "—" if value is None else ("<0.001" if value < 0.001 else f"{value:.3f}")


def render_markdown(report: Mapping[str, Any]) -> str:
    """The Markdown of a report's JSON data (:meth:`Report.to_dict`, or a ``.json`` file it wrote): one table per
    metric (rows: arms; columns: overall and each group; cells ``mean [low, high]``), the costs, the paired
    comparisons with the baseline and the metadata. Data of another kind raises
    :class:`~ragplug.errors.InvalidInputError`."""
    _checked_report(report)
    try:
        level = f"{100 * report['confidence']:g}%"
        method = f"{report['interval']}, {report['resamples']} resamples, seed {report['seed']}"
        lines = [f"# {_text(report['title'])}", "", f"Mean per item [{level} confidence interval] ({method}).", ""]
        scopes: list[tuple[str, str | None]] = [("overall", None)] + [(g, g) for g in report["groups"]]
        for metric in report["metrics"]:
            by_arm = {arm: report["estimates"][arm][metric] for arm in report["arms"]}
            header, columns = ["arm"], []
            for label, group in scopes:
                cells = [e["overall"] if group is None else e["groups"][group] for e in by_arm.values()]
                sizes = sorted({c["n"] for c in cells if c is not None})
                header.append(f"{_text(label)} (n={sizes[0]})" if len(sizes) == 1 else _text(label))
                columns.append([_cell(c, n=len(sizes) > 1) for c in cells])
            rows = [[_text(arm), *cells] for arm, cells in zip(by_arm, zip(*columns, strict=True), strict=True)]
            lines += [f"## {_text(metric)}", "", *_table(header, rows)]
        if report["costs"]:
            names = list(dict.fromkeys(name for costs in report["costs"].values() for name in costs))
            rows = [
                [_text(arm)] + [f"{costs[n]:.4g}" if n in costs else "—" for n in names]
                for arm, costs in ((arm, report["costs"].get(arm, {})) for arm in report["arms"])
            ]
            lines += ["## Costs", "", *_table(["arm", *map(_text, names)], rows)]
        comparisons = report["comparisons"]
        if comparisons:
            lines += [f"## Paired comparison with `{_text(comparisons['baseline'])}`", ""]
            lines += [
                f"Difference = arm − baseline on the items both scored; p from a {comparisons['test']}, not "
                "adjusted for multiple comparisons. Unpaired: items only the baseline / only the arm scored.",
                "",
            ]
            header = ["metric", "arm", "scope", f"difference [{level} CI]", "p", "paired", "unpaired"]
            rows = [
                [
                    _text(row["metric"]),
                    _text(row["arm"]),
                    "overall" if row["group"] is None else _text(row["group"]),
                    _cell(row["difference"]),
                    _p(row["p_value"]),
                    str(row["difference"]["n"] if row["difference"] else 0),
                    f"{row['only_baseline']} / {row['only_arm']}",
                ]
                for row in comparisons["rows"]
            ]
            lines += _table(header, rows, right=3)
        if report["metadata"]:
            lines += ["## Metadata", "", "```json", json.dumps(report["metadata"], indent=2, ensure_ascii=False)]
            lines += ["```", ""]
    except (KeyError, TypeError, ValueError, AttributeError) as err:
        msg = f"malformed report data: {type(err).__name__}: {err}"
        raise InvalidInputError(msg) from err
    return "\n".join(lines)


def _short(text: str, limit: int = 18) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def render_png(report: Mapping[str, Any], *, dpi: int = 110) -> bytes:
    """A PNG of a report's JSON data: one panel per metric, for each scope (overall, then each group) a bar per
    arm at its mean with the confidence interval as error bar. The same data gives the same bytes (with the same
    matplotlib); no pyplot state changes. Data of another kind raises :class:`~ragplug.errors.InvalidInputError`."""
    _checked_report(report)
    require("matplotlib", "eval")
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.patches import Patch

    arms, metrics = list(report["arms"]), list(report["metrics"])
    scopes: list[str | None] = [None, *report["groups"]]
    ncols = min(3, len(metrics))
    nrows = math.ceil(len(metrics) / ncols)
    width = max(4.0, min(12.0, 1.0 + 0.28 * len(arms) * len(scopes) + 0.4 * len(scopes)))
    fig = Figure(figsize=(width * ncols, 3.8 * nrows + 0.6), layout="constrained")
    FigureCanvasAgg(fig)
    colours = {arm: _COLOURS[i % len(_COLOURS)] for i, arm in enumerate(arms)}
    step = 0.8 / len(arms)
    for index, metric in enumerate(metrics):
        ax = fig.add_subplot(nrows, ncols, index + 1)
        for a, arm in enumerate(arms):
            by_scope = report["estimates"][arm][metric]
            cells = [(s, by_scope["overall"] if g is None else by_scope["groups"][g]) for s, g in enumerate(scopes)]
            cells = [(s, c) for s, c in cells if c is not None]
            if not cells:
                continue
            x = np.array([s for s, _ in cells], dtype=np.float64) - 0.4 + step * (a + 0.5)
            means = np.array([c["mean"] for _, c in cells])
            errors = np.array([[c["mean"] - c["low"] for _, c in cells], [c["high"] - c["mean"] for _, c in cells]])
            ax.bar(x, means, width=step * 0.9, color=colours[arm], yerr=np.clip(errors, 0.0, None), capsize=3)
        ax.set_xticks(range(len(scopes)), ["overall" if g is None else _short(str(g)) for g in scopes])
        if len(scopes) > 4:
            ax.tick_params(axis="x", labelrotation=25)
        if metric in report["bounds"]:
            low, high = report["bounds"][metric]
            ax.set_ylim(low, high + 0.05 * (high - low or 1.0))
        ax.set_title(_short(str(metric), 40))
        ax.set_ylabel(f"mean ({100 * report['confidence']:g}% CI)")
        ax.grid(axis="y", alpha=0.3)
        ax.set_axisbelow(True)
    handles = [Patch(color=colours[arm], label=_short(str(arm), 30)) for arm in arms]
    fig.legend(handles=handles, loc="outside lower center", ncols=min(len(arms), 5), frameon=False)
    fig.suptitle(_short(str(report["title"]), 80))
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi)
    return buffer.getvalue()
