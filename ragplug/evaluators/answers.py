"""Answer metrics: SQuAD exact match and token F1, and label accuracy for closed-label tasks (PubMedQA).

The normalisation is SQuAD's own (lowercase, ASCII punctuation removed, the articles a/an/the dropped,
whitespace collapsed), kept exactly so that a score here compares with the published SQuAD-style numbers.
Pure Python, no extra needed.
"""

from __future__ import annotations

import re
import string
from collections import Counter
from collections.abc import Sequence

from ragplug.errors import InvalidInputError

__all__ = [
    "DEFAULT_LABELS",
    "exact_match",
    "extract_label",
    "label_accuracy",
    "normalize_answer",
    "token_f1",
]

DEFAULT_LABELS: tuple[str, ...] = ("yes", "no", "maybe")

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCTUATION = str.maketrans("", "", string.punctuation)

Reference = str | Sequence[str]


def normalize_answer(text: str) -> str:
    """``text`` lowercased, without ASCII punctuation or the articles a/an/the, whitespace collapsed (SQuAD)."""
    if not isinstance(text, str):
        msg = f"an answer must be a string, got {type(text).__name__}: {text!r}"
        raise InvalidInputError(msg)
    text = text.lower().translate(_PUNCTUATION)
    return " ".join(_ARTICLES.sub(" ", text).split())


def exact_match(prediction: str, reference: Reference) -> float:
    """1.0 when ``prediction`` equals a reference after :func:`normalize_answer`, else 0.0.

    ``reference`` is one string or a sequence of acceptable ones (the best match counts)."""
    pred = normalize_answer(prediction)
    return max(float(pred == normalize_answer(ref)) for ref in _references(reference))


def token_f1(prediction: str, reference: Reference) -> float:
    """SQuAD's token-level F1 between ``prediction`` and the best-matching reference, after normalisation.

    Tokens are counted with multiplicity. When either side has no token left, F1 is 1.0 if both are empty and
    0.0 otherwise (as SQuAD 2.0 scores an abstention)."""
    pred_tokens = normalize_answer(prediction).split()
    return max(_f1(pred_tokens, normalize_answer(ref).split()) for ref in _references(reference))


def _f1(pred: list[str], gold: list[str]) -> float:
    if not pred or not gold:
        return float(pred == gold)
    same = sum((Counter(pred) & Counter(gold)).values())
    if same == 0:
        return 0.0
    precision = same / len(pred)
    recall = same / len(gold)
    return 2 * precision * recall / (precision + recall)


def _references(reference: Reference) -> list[str]:
    if reference is None:
        msg = "the reference answer is missing (None): this item cannot be scored against a reference"
        raise InvalidInputError(msg)
    if isinstance(reference, str):
        return [reference]
    if not isinstance(reference, Sequence) or not reference:
        msg = f"a reference must be a string or a non-empty sequence of strings, got {reference!r}"
        raise InvalidInputError(msg)
    for ref in reference:
        if not isinstance(ref, str):
            msg = f"each reference must be a string, got {type(ref).__name__}: {ref!r}"
            raise InvalidInputError(msg)
    return list(reference)


def extract_label(text: str, labels: Sequence[str] = DEFAULT_LABELS) -> str | None:
    """The label ``text`` starts with, or None.

    Rule: ``text`` and every label are normalised with :func:`normalize_answer`; the label is the one whose
    words are the first words of the text (the longest such label when several match, so ``"no answer"`` wins
    over ``"no"``). ``"Yes, because ..."`` and ``"**Maybe.**"`` give ``"yes"`` and ``"maybe"``; ``"I think
    yes"`` and ``"Answer: no"`` give None. Only the start counts because the prompt asks the model to reply
    with the label first: a label found later may be a quoted option ("yes or no?") rather than the answer.
    The label is returned as written in ``labels``."""
    words = normalize_answer(text).split()
    best: str | None = None
    best_len = 0
    for label, label_words in _label_words(labels):
        n = len(label_words)
        if n > best_len and words[:n] == label_words:
            best, best_len = label, n
    return best


def _label_words(labels: Sequence[str]) -> list[tuple[str, list[str]]]:
    if isinstance(labels, str) or not isinstance(labels, Sequence) or not labels:
        msg = f"labels must be a non-empty sequence of strings, got {labels!r}"
        raise InvalidInputError(msg)
    out: list[tuple[str, list[str]]] = []
    for label in labels:
        words = normalize_answer(label).split()
        if not words:
            msg = f"label {label!r} is empty after normalisation (punctuation and articles are removed)"
            raise InvalidInputError(msg)
        out.append((label, words))
    return out


def label_accuracy(
    predictions: Sequence[str], references: Sequence[str], labels: Sequence[str] = DEFAULT_LABELS
) -> float:
    """Share of ``predictions`` whose :func:`extract_label` equals the reference label.

    A prediction that starts with no label counts as wrong. Each reference must itself be a label (checked
    with the same rule), so a typo in the gold data raises instead of lowering the score."""
    for name, values in (("predictions", predictions), ("references", references)):
        if isinstance(values, str) or not isinstance(values, Sequence):
            msg = f"{name} must be a sequence of strings, got {type(values).__name__}"
            raise InvalidInputError(msg)
    if len(predictions) != len(references):
        msg = f"{len(predictions)} predictions for {len(references)} references: give one per reference"
        raise InvalidInputError(msg)
    if not references:
        msg = "no predictions to score"
        raise InvalidInputError(msg)
    _label_words(labels)  # bad labels raise even when every text is bad
    correct = 0
    for i, (prediction, reference) in enumerate(zip(predictions, references, strict=True)):
        if reference is None:
            msg = f"reference {i} is missing (None): label accuracy needs a reference label for every item"
            raise InvalidInputError(msg)
        gold = extract_label(reference, labels)
        if gold is None or normalize_answer(reference) != normalize_answer(gold):
            msg = f"reference {i} ({reference!r}) is not one of the labels {list(labels)}"
            raise InvalidInputError(msg)
        correct += extract_label(prediction, labels) == gold
    return correct / len(references)
