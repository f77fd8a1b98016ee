"""Evaluators: retrieval and answer metrics, LLM judges, datasets, a batch runner, reports, and the RAG vs LoRA
experiment. Needs ``pip install "ragplug[eval]"`` for metrics and reports.

Modules, one job each: :mod:`.metrics` (retrieval metrics by ir-measures), :mod:`.answers` (exact match,
token F1, label accuracy), :mod:`.judges` (LLM judges through any :class:`~ragplug.chat.ChatFunction`),
:mod:`.datasets` (QA JSONL, Alpaca, PubMedQA, BEIR), :mod:`.runner` (async batches with bounded concurrency,
also from inside a running event loop), :mod:`.report` (confidence intervals, paired tests, JSON / Markdown /
plots), :mod:`.experiment` (base vs RAG vs LoRA vs both, resumable) and :mod:`.synthetic` (a world of fictional
facts for the offline knowledge-injection experiment). The LangChain and LlamaIndex faces live in
``ragplug.plugins``. Names are imported on first use, so this package loads nothing heavy.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ragplug._extras import lazy_attributes

if TYPE_CHECKING:
    from ragplug.evaluators.answers import exact_match, extract_label, label_accuracy, normalize_answer, token_f1
    from ragplug.evaluators.datasets import (
        BeirDataset,
        QADataset,
        QAItem,
        load_alpaca,
        load_beir,
        load_pubmedqa,
        load_qa_jsonl,
    )
    from ragplug.evaluators.experiment import ARMS, CompareConfig, CompareResult, compare
    from ragplug.evaluators.judges import (
        ContextRelevance,
        Correctness,
        Faithfulness,
        Judge,
        JudgeItem,
        Judgement,
        PairwisePreference,
    )
    from ragplug.evaluators.metrics import RETRIEVAL_METRICS, RetrievalScores, retrieval_scores
    from ragplug.evaluators.report import Estimate, PairedTest, Report, compare_paired, summarize
    from ragplug.evaluators.runner import BatchRunner, ItemOutcome, arun_batch, run_batch

_WHERE = {
    "exact_match": "ragplug.evaluators.answers",
    "extract_label": "ragplug.evaluators.answers",
    "label_accuracy": "ragplug.evaluators.answers",
    "normalize_answer": "ragplug.evaluators.answers",
    "token_f1": "ragplug.evaluators.answers",
    "ARMS": "ragplug.evaluators.experiment",
    "CompareConfig": "ragplug.evaluators.experiment",
    "CompareResult": "ragplug.evaluators.experiment",
    "compare": "ragplug.evaluators.experiment",
    "BeirDataset": "ragplug.evaluators.datasets",
    "QADataset": "ragplug.evaluators.datasets",
    "QAItem": "ragplug.evaluators.datasets",
    "load_alpaca": "ragplug.evaluators.datasets",
    "load_beir": "ragplug.evaluators.datasets",
    "load_pubmedqa": "ragplug.evaluators.datasets",
    "load_qa_jsonl": "ragplug.evaluators.datasets",
    "ContextRelevance": "ragplug.evaluators.judges",
    "Correctness": "ragplug.evaluators.judges",
    "Faithfulness": "ragplug.evaluators.judges",
    "Judge": "ragplug.evaluators.judges",
    "JudgeItem": "ragplug.evaluators.judges",
    "Judgement": "ragplug.evaluators.judges",
    "PairwisePreference": "ragplug.evaluators.judges",
    "RETRIEVAL_METRICS": "ragplug.evaluators.metrics",
    "RetrievalScores": "ragplug.evaluators.metrics",
    "retrieval_scores": "ragplug.evaluators.metrics",
    "Estimate": "ragplug.evaluators.report",
    "PairedTest": "ragplug.evaluators.report",
    "Report": "ragplug.evaluators.report",
    "compare_paired": "ragplug.evaluators.report",
    "summarize": "ragplug.evaluators.report",
    "BatchRunner": "ragplug.evaluators.runner",
    "ItemOutcome": "ragplug.evaluators.runner",
    "arun_batch": "ragplug.evaluators.runner",
    "run_batch": "ragplug.evaluators.runner",
}

__all__ = [
    "ARMS",
    "RETRIEVAL_METRICS",
    "BatchRunner",
    "BeirDataset",
    "CompareConfig",
    "CompareResult",
    "ContextRelevance",
    "Correctness",
    "Estimate",
    "Faithfulness",
    "ItemOutcome",
    "Judge",
    "JudgeItem",
    "Judgement",
    "PairedTest",
    "PairwisePreference",
    "QADataset",
    "QAItem",
    "Report",
    "RetrievalScores",
    "arun_batch",
    "compare",
    "compare_paired",
    "exact_match",
    "extract_label",
    "label_accuracy",
    "load_alpaca",
    "load_beir",
    "load_pubmedqa",
    "load_qa_jsonl",
    "normalize_answer",
    "retrieval_scores",
    "run_batch",
    "summarize",
    "token_f1",
]

__getattr__ = lazy_attributes(__name__, _WHERE)
