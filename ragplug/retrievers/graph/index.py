"""The Graph RAG engine: documents in, a knowledge graph and a ColBERT index of the same passages out, searched
locally, globally or in hybrid. It satisfies the :class:`~ragplug.retrievers.protocol.Retriever` protocol (and
:class:`~ragplug.retrievers.protocol.WritableRetriever`), so the generic LangChain and LlamaIndex retrievers
serve it like any other engine.

The stages are separate modules over injected storages: :mod:`.chunking` (documents → passages),
an :class:`~.model.Extractor` (:class:`~.extract.PhraseExtractor` without an LLM by default, or
:class:`~.llm.LLMExtractor`), a :class:`~.model.GraphStore` (:mod:`.stores`: memory or Postgres),
:mod:`.communities` and :mod:`.search`. :class:`GraphIndex` wires them: it cuts, extracts, embeds the new
entities' names with the passage encoder (for synonym edges and for seeding searches), links entities whose
embeddings are close (``synonym_threshold``), and writes one :class:`~.model.GraphBatch` per call.

Writes touch two stores, the graph and the passage index. The graph is written first; when the passage
index then refuses the write, the graph's part is undone (deleted again), so the two stay in step.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ragplug.errors import DuplicateIdError, InvalidInputError, StoreCorruptedError, StoreError, UnknownIdError
from ragplug.retrievers.graph.chunking import PassageSplitter, split_documents
from ragplug.retrievers.graph.model import (
    SYNONYM,
    ChatFunction,
    Community,
    Extraction,
    Extractor,
    GraphBatch,
    GraphIdentity,
    GraphStats,
    GraphStore,
    Passage,
    Relation,
)
from ragplug.retrievers.graph.search import GraphSearchOptions, GraphView, LocalSearch, embed_phrases
from ragplug.retrievers.late_interaction import Encoder, LateInteractionIndex
from ragplug.retrievers.late_interaction.base import Hit, Record, check_ids, check_k
from ragplug.retrievers.late_interaction.filters import Filter, FilterNode, parse_filter, to_predicate

__all__ = ["GlobalAnswer", "GraphIndex", "IndexReport"]

logger = logging.getLogger(__name__)

MANIFEST = "graph_index.json"


@dataclass
class IndexReport:
    """What the last write did: counts, the passages and documents that yielded nothing, seconds per stage."""

    documents: int = 0
    passages: int = 0
    blank_documents: list[str] = field(default_factory=list)
    empty_passages: list[str] = field(default_factory=list)
    new_entities: int = 0
    synonyms: int = 0
    seconds: dict[str, float] = field(default_factory=dict)


class GraphIndex:
    """Graph RAG over ``store`` (a :class:`~.model.GraphStore`) and ``passages`` (a ColBERT
    :class:`~ragplug.retrievers.late_interaction.LateInteractionIndex` of the same passages).

    ``extractor`` defaults to the LLM-free :class:`~.extract.PhraseExtractor`; ``chat`` (a
    :class:`~.model.ChatFunction`) writes community summaries and reads communities in global search.
    """

    search_options = GraphSearchOptions

    def __init__(
        self,
        store: GraphStore,
        passages: LateInteractionIndex,
        *,
        extractor: Extractor | None = None,
        chat: ChatFunction | None = None,
        splitter: PassageSplitter | None = None,
        synonym_threshold: float = 0.9,
        synonym_k: int = 4,
        seed_threshold: float = 0.8,
    ) -> None:
        from ragplug.retrievers.graph.extract import PhraseExtractor

        if not 0 < synonym_threshold <= 1 or not 0 < seed_threshold <= 1:
            msg = f"synonym_threshold and seed_threshold must be in (0, 1], got {synonym_threshold}, {seed_threshold}"
            raise InvalidInputError(msg)
        self.store, self.passages = store, passages
        self.extractor: Extractor = extractor if extractor is not None else PhraseExtractor()
        self.chat = chat
        self.splitter = splitter or PassageSplitter()
        self.synonym_threshold, self.synonym_k = float(synonym_threshold), int(synonym_k)
        self.identity = GraphIdentity(
            self.extractor.name, dict(self.extractor.settings), self.encoder.identity.to_dict()
        )
        if store.identity is not None:
            store.identity.check(self.identity, f"the graph store ({store.kind})")
        self.view = GraphView(store)
        self.local = LocalSearch(self.view, self.extractor, self.encoder, seed_threshold=seed_threshold)
        self.last_report = IndexReport()
        self._global_cache: tuple[int | None, list[Community], LateInteractionIndex | None] | None = None

    @property
    def encoder(self) -> Encoder:
        return self.passages.encoder

    # ------------------------------------------------------------------ building
    @classmethod
    def from_texts(
        cls,
        texts: Sequence[str],
        *,
        ids: Sequence[str] | None = None,
        metadatas: Sequence[Mapping[str, Any] | None] | None = None,
        model: str | Path | Encoder | None = None,
        store: GraphStore | None = None,
        passage_store: Any = None,
        show_progress: bool | None = None,
        encoder_kwargs: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> GraphIndex:
        """Build a graph index of ``texts``: the encoder (a ColBERT checkpoint, default ragplug's default
        ColBERT model), an in-memory graph store and passage index unless given, then :meth:`add`."""
        from ragplug.retrievers.build import make_encoder
        from ragplug.retrievers.colbert import DEFAULT_MODEL
        from ragplug.retrievers.graph.stores import MemoryGraphStore

        encoder = make_encoder(DEFAULT_MODEL if model is None else model, encoder_kwargs)
        index = cls(
            store if store is not None else MemoryGraphStore(),
            LateInteractionIndex(encoder, passage_store),
            **kwargs,
        )
        index.add(texts, ids=ids, metadatas=metadatas, show_progress=show_progress)
        return index

    def add(
        self,
        texts: Sequence[str],
        *,
        ids: Sequence[str] | None = None,
        metadatas: Sequence[Mapping[str, Any] | None] | None = None,
        upsert: bool = False,
        show_progress: bool | None = None,
    ) -> list[str]:
        """Cut ``texts`` (documents) into passages, extract, embed and store them; returns the document ids
        (``doc-<n>`` numbering when not given). ``upsert`` replaces documents already stored. Documents and
        passages that yield no entity are reported (log and :attr:`last_report`), never silently dropped:
        their passages are still searchable through the passage index and the graph's passage nodes."""
        if isinstance(texts, str):
            msg = "texts must be a list of strings, not one string"
            raise InvalidInputError(msg)
        texts = list(texts)
        doc_ids = check_ids(ids, "ids") if ids is not None else self._new_ids(len(texts))
        report = IndexReport(documents=len(texts))
        clock = time.perf_counter()
        passages, report.blank_documents = split_documents(texts, doc_ids, metadatas, splitter=self.splitter)
        if report.blank_documents:
            blank = report.blank_documents
            logger.warning("%d blank documents gave no passage: %s", len(blank), blank[:10])
        stored = set(self.store.documents())
        if not upsert:
            taken = [d for d in doc_ids if d in stored]
            if taken:
                msg = f"documents already stored: {taken[:5]}; use upsert=True to replace them"
                raise DuplicateIdError(msg)
        report.seconds["split"] = time.perf_counter() - clock
        self._graph_and_write(passages, report, upsert, show_progress, index_passages=True)
        emptied = [d for d in report.blank_documents if d in stored] if upsert else []
        if emptied:  # upserted as blank: the document has no passage any more
            self.delete(emptied)
        return doc_ids

    def _graph_and_write(
        self,
        passages: list[Passage],
        report: IndexReport,
        upsert: bool,
        show_progress: bool | None,
        *,
        index_passages: bool,
    ) -> None:
        """Extract, embed and write ``passages`` (to the passage index too when ``index_passages``; else they
        are in it already), filling ``report``."""
        report.passages = len(passages)
        if not passages:
            self.last_report = report
            return
        clock = time.perf_counter()
        extractions = self.extractor.extract(passages, show_progress=show_progress)
        report.seconds["extract"] = time.perf_counter() - clock
        report.empty_passages = [e.passage_id for e in extractions if not e.entities]
        if report.empty_passages:
            logger.warning(
                "%d of %d passages yielded no entity (they stay searchable as passages): %s",
                len(report.empty_passages),
                len(passages),
                report.empty_passages[:10],
            )
        clock = time.perf_counter()
        batch = self._batch(passages, extractions, show_progress)
        report.new_entities, report.synonyms = len(batch.entity_vectors), len(batch.synonyms)
        report.seconds["embed"] = time.perf_counter() - clock
        if not index_passages:
            clock = time.perf_counter()
            if self.store.identity is None:
                self.store.bind(self.identity)
            self.store.add(batch)
            report.seconds["graph_store"] = time.perf_counter() - clock
        else:
            report.seconds.update(self._write(batch, upsert, show_progress))
        self.last_report = report

    @classmethod
    def from_index(
        cls,
        passages: LateInteractionIndex,
        *,
        store: GraphStore | None = None,
        show_progress: bool | None = None,
        **kwargs: Any,
    ) -> GraphIndex:
        """A graph over the records of an existing ColBERT index, without encoding them again: each record
        with text is a passage (a chunk's document is its parent item), extracted, embedded and linked. The
        graph and the index then grow together through :meth:`add` and :meth:`delete`. Records without
        text cannot be read by an extractor; they are counted in the log and stay searchable by ColBERT."""
        from ragplug.retrievers.graph.stores import MemoryGraphStore

        index = cls(store if store is not None else MemoryGraphStore(), passages, **kwargs)
        report = IndexReport()
        clock = time.perf_counter()
        found: list[Passage] = []
        textless = 0
        ids = passages.store.ids()
        for start in range(0, len(ids), 1024):
            for record in passages.get(ids[start : start + 1024]):
                if not record.text or not record.text.strip():
                    textless += 1
                    continue
                found.append(Passage(record.id, record.text, record.item_id, dict(record.metadata)))
        if textless:
            logger.warning("%d records of the index have no text: they are not in the graph", textless)
        report.documents = len({p.doc_id for p in found})
        report.seconds["read"] = time.perf_counter() - clock
        index._graph_and_write(found, report, False, show_progress, index_passages=False)
        return index

    async def aadd(self, texts: Sequence[str], **kwargs: Any) -> list[str]:
        """:meth:`add` in a worker thread."""
        return await asyncio.to_thread(self.add, texts, **kwargs)

    def _new_ids(self, n: int) -> list[str]:
        taken = set(self.store.documents())
        out: list[str] = []
        i = len(taken)
        while len(out) < n:
            if f"doc-{i}" not in taken:
                out.append(f"doc-{i}")
            i += 1
        return out

    def _batch(self, passages: list[Passage], extractions: list[Extraction], show_progress: bool | None) -> GraphBatch:
        """The write: new entities' vectors and synonym edges among new and stored entities."""
        names: dict[str, str] = {}
        for extraction in extractions:
            for entity in extraction.entities:
                names.setdefault(entity.key, entity.name)
        known = self.store.entity_vectors(list(names))
        new = [key for key in names if key not in known]
        vectors = embed_phrases(self.encoder, [names[k] for k in new], show_progress=show_progress)
        synonyms: list[Relation] = []
        if len(new):
            synonyms = self._synonyms(new, vectors)
        return GraphBatch(passages, extractions, dict(zip(new, vectors, strict=True)), synonyms)

    def _synonyms(self, keys: list[str], vectors: np.ndarray) -> list[Relation]:
        """Edges between entities whose name embeddings are at least ``synonym_threshold`` alike: among the
        new ones (blocked matrix products) and towards stored ones (the store's nearest-entity search)."""
        out: dict[tuple[str, str], float] = {}
        block = 2048
        for start in range(0, len(keys), block):
            sims = vectors[start : start + block] @ vectors.T
            for row in range(sims.shape[0]):
                i = start + row
                sims[row, i] = -1.0
                best = np.argpartition(-sims[row], min(self.synonym_k, len(keys) - 1))[: self.synonym_k]
                for j in best.tolist():
                    if sims[row, j] >= self.synonym_threshold:
                        pair = (keys[i], keys[j]) if keys[i] < keys[j] else (keys[j], keys[i])
                        out[pair] = float(sims[row, j])
        if len(self.store):
            new = set(keys)
            for key, nearest in zip(keys, self.store.nearest_entities(vectors, self.synonym_k), strict=True):
                for other, similarity in nearest:
                    if other not in new and similarity >= self.synonym_threshold:
                        pair = (key, other) if key < other else (other, key)
                        out[pair] = float(similarity)
        return [Relation(a, b, SYNONYM, w) for (a, b), w in sorted(out.items())]

    def _write(self, batch: GraphBatch, upsert: bool, show_progress: bool | None) -> dict[str, float]:
        """Encode the passages (before anything is written: the step most likely to fail), write the graph,
        then the passage index in one write; the seconds each took. Should that last write fail, a new
        document's graph part is deleted again; an upsert cannot be undone and says so."""
        clock = time.perf_counter()
        _, records = self.passages.prepare(
            [p.text for p in batch.passages],
            [p.id for p in batch.passages],
            [dict(p.metadata) for p in batch.passages],
            None,
            show_progress,
            [p.doc_id if p.id != p.doc_id else None for p in batch.passages],
        )
        seconds = {"passage_encode": time.perf_counter() - clock}
        clock = time.perf_counter()
        if self.store.identity is None:
            self.store.bind(self.identity)
        self.store.add(batch, replace_documents=upsert)
        seconds["graph_store"] = time.perf_counter() - clock
        clock = time.perf_counter()
        try:
            self.passages.write(records, upsert=upsert)
        except BaseException as err:
            if not upsert:  # keep the two stores in step: undo the graph's part
                self.store.delete_documents(sorted({p.doc_id for p in batch.passages}))
                raise
            msg = f"the graph was updated but the passage index refused the write ({err}); re-run the upsert"
            raise StoreError(msg) from err
        seconds["passage_index"] = time.perf_counter() - clock
        return seconds

    # ------------------------------------------------------------------ reading and deleting
    def delete(self, ids: Sequence[str]) -> None:
        """Delete documents (all their passages) from the graph and the passage index. Entities, relations and
        synonym edges that only these documents supported go with them; unknown ids raise and delete nothing."""
        ids = check_ids(ids)
        stored = set(self.store.documents())
        unknown = [i for i in ids if i not in stored]
        if unknown:
            msg = f"unknown document ids: {unknown[:5]}"
            raise UnknownIdError(msg)
        self.store.delete_documents(ids)
        self.passages.delete(ids)

    async def adelete(self, ids: Sequence[str]) -> None:
        await asyncio.to_thread(self.delete, ids)

    def get(self, ids: Sequence[str]) -> list[Record]:
        """The passage records of ``ids`` (passage or document ids), from the passage index."""
        return self.passages.get(ids)

    def stats(self) -> GraphStats:
        return self.store.stats()

    # ------------------------------------------------------------------ searching
    def search(self, query: str, *, k: int = 4, filter: Filter | FilterNode | None = None, **options: Any) -> list[Hit]:
        """The ``k`` best passages (local, hybrid) or communities (global) for ``query``; see
        :class:`~.search.GraphSearchOptions` for the options and :mod:`.search` for the modes."""
        k = check_k(k)
        opts = GraphSearchOptions.from_kwargs(**options)
        node = parse_filter(filter)
        if not isinstance(query, str) or not query.strip():
            msg = "the query must be a non-empty string"
            raise InvalidInputError(msg)
        if opts.mode == "global":
            return self._global(query, k, node, opts)
        return self._local(query, k, node, opts)

    async def asearch(
        self, query: str, *, k: int = 4, filter: Filter | FilterNode | None = None, **options: Any
    ) -> list[Hit]:
        """:meth:`search` in a worker thread (the walk is CPU work)."""
        return await asyncio.to_thread(self.search, query, k=k, filter=filter, **options)

    def _local(self, query: str, k: int, filter: FilterNode | None, opts: GraphSearchOptions) -> list[Hit]:
        snapshot, prepared = self.view.current()
        seeds = self.local.seeds(query, snapshot, prepared)
        dense: list[Hit] = []
        if opts.mode == "hybrid" or not seeds.entities:
            dense = self.passages.search(query, k=max(k, opts.dense_k), filter=filter)
        if not seeds.entities:
            note = "no seed entity in the query: ColBERT ranking"
            logger.info("graph search fell back to ColBERT for %r: no seed entity", query)
            return [_with(h, {"graph_mode": opts.mode, "graph_fallback": note}) for h in dense[:k]]
        passage_seeds: dict[int, float] = {}
        if dense and opts.passage_weight > 0:  # HippoRAG 2: ColBERT's passages seed the walk too
            top = max(h.relevance or 0.0 for h in dense) or 1.0
            total = sum(seeds.entities.values())
            for h in dense:
                p = prepared.passage_index.get(h.id)
                if p is not None:
                    passage_seeds[p] = opts.passage_weight * total * (h.relevance or 0.0) / top
        walked = self.local.walk(prepared, seeds.entities, passage_seeds, opts.damping)
        entity_scores, scores = walked[: prepared.n_entities], walked[prepared.n_entities :]
        wanted = max(k, opts.dense_k) if opts.mode == "hybrid" else k
        ranked = self._ranked(snapshot, prepared, seeds, scores, entity_scores, wanted, filter, opts.mode)
        if opts.mode == "local":
            return ranked[:k]
        return _fuse(ranked, dense, k, opts.dense_weight)

    def _ranked(
        self,
        snapshot: Any,
        prepared: Any,
        seeds: Any,
        scores: np.ndarray,
        entity_scores: np.ndarray,
        wanted: int,
        filter: FilterNode | None,
        mode: str,
    ) -> list[Hit]:
        """The ``wanted`` passages of highest walk score that pass ``filter``, with their evidence; relevance
        is the score over the best passage's."""
        order = np.argsort(-scores, kind="stable")
        top_score = float(scores[order[0]]) if len(order) and scores[order[0]] > 0 else 1.0
        keep = None if filter is None else to_predicate(filter)  # compiled once, not per passage
        ranked: list[Hit] = []
        for start in range(0, len(order), 256):
            chunk = [int(p) for p in order[start : start + 256] if scores[p] > 0]
            if not chunk:
                break
            for passage in self.store.passages([snapshot.passage_ids[p] for p in chunk]):
                if keep is not None and not keep(passage.metadata):
                    continue
                p = prepared.passage_index[passage.id]
                meta = {**passage.metadata, "graph_mode": mode}
                meta.update(self.local.explain(snapshot, prepared, seeds, p, entity_scores))
                parent = passage.doc_id if passage.doc_id != passage.id else None
                score = float(scores[p])
                ranked.append(Hit(passage.id, score, meta, passage.text, parent, score / top_score))
                if len(ranked) >= wanted:
                    return ranked
        return ranked

    # ------------------------------------------------------------------ communities
    def build_communities(self, *, show_progress: bool | None = None, **kwargs: Any) -> list[Community]:
        """Detect communities (Leiden) on the current graph, summarise them (with ``chat`` when given, else
        extractively) and store them with the graph's version. Global search calls this when the stored
        communities are older than the graph."""
        from ragplug.retrievers.graph.communities import detect_communities, summarize_communities

        snapshot, _ = self.view.current()
        found = detect_communities(snapshot, **kwargs)
        names = dict(zip(snapshot.entity_keys, snapshot.entity_names, strict=True))
        found = summarize_communities(found, self.store.passages, names, chat=self.chat, show_progress=show_progress)
        self.store.set_communities(found, snapshot.version)
        return found

    def _global(self, query: str, k: int, filter: FilterNode | None, opts: GraphSearchOptions) -> list[Hit]:
        communities, ranker = self._communities()
        if not communities or ranker is None:
            msg = "the graph has no communities (too few linked entities); use mode='local' or 'hybrid'"
            raise InvalidInputError(msg)
        by_id = {c.id: c for c in communities}
        hits = ranker.search(query, k=min(len(communities), max(k, opts.max_llm_calls, 10)))
        ranked: list[tuple[int, float, Community, dict[str, Any]]] = []
        calls = 0
        keep = None if filter is None else to_predicate(filter)
        seen: set[frozenset[str]] = set()
        for hit in hits:
            community = by_id[hit.id]
            members = frozenset(community.entities)
            if members in seen:  # the same group at a coarser level (Leiden merged nothing into it)
                continue
            seen.add(members)
            cited = list(community.passages)
            if keep is not None:
                cited = [p.id for p in self.store.passages(cited) if keep(p.metadata)]
                if not cited:
                    continue
            extra: dict[str, Any] = {}
            score, tier = float(hit.relevance or 0.0), 1
            if self.chat is not None and calls < opts.max_llm_calls:
                calls += 1
                judged = _map_community(self.chat, query, community)
                if judged is None:
                    extra["graph_llm_error"] = "the LLM's answer did not validate twice; ranked by similarity"
                else:
                    score, extra["graph_answer"] = judged[0] / 100.0, judged[1]
                    tier = 0 if judged[0] > 0 else 2  # judged helpful, not judged, judged useless
            ranked.append((tier, score, community, {**extra, "graph_passages": cited[:20]}))
        ranked.sort(key=lambda item: (item[0], -item[1]))
        out = []
        for _, score, community, extra in ranked[:k]:
            meta = {
                "graph_mode": "global",
                "graph_community": community.id,
                "graph_level": community.level,
                "title": community.title,
                "graph_entities": list(community.entities[:20]),
                "graph_llm_calls": calls,
                **extra,
            }
            text = f"{community.title}\n\n{community.summary}"
            if "graph_answer" in extra:
                text = f"{text}\n\nFor this question: {extra['graph_answer']}"
            out.append(Hit(community.id, score, meta, text, None, min(1.0, max(0.0, score))))
        return out

    def answer_global(self, query: str, *, k: int = 5, max_llm_calls: int = 6) -> GlobalAnswer:
        """GraphRAG's global search as an answer: the ``k`` communities nearest the query are read by the
        chat model (the map step, at most ``max_llm_calls - 1`` calls), then one call writes the answer from
        the helpful partial answers (the reduce step). The answer cites its communities and passages. Needs
        a ``chat`` function; when the reduce call fails, the best partial answer is returned and says so."""
        if self.chat is None:
            msg = "answer_global needs a chat function: GraphIndex(..., chat=...)"
            raise InvalidInputError(msg)
        if isinstance(max_llm_calls, bool) or not isinstance(max_llm_calls, int) or max_llm_calls < 2:
            msg = f"max_llm_calls must be an integer >= 2 (map and reduce), got {max_llm_calls!r}"
            raise InvalidInputError(msg)
        hits = self.search(query, k=k, mode="global", max_llm_calls=max_llm_calls - 1)
        helpful = [h for h in hits if h.metadata.get("graph_answer") and h.score > 0]
        calls = hits[0].metadata["graph_llm_calls"] if hits else 0
        if not helpful:
            return GlobalAnswer("The indexed documents do not answer this question.", hits, calls, reduced=False)
        notes = "\n\n".join(
            f"[{h.id}] (helpfulness {round(100 * h.score)}) {h.metadata['graph_answer']}" for h in helpful
        )
        messages = [
            {
                "role": "system",
                "content": (
                    "You write the answer to a question from partial answers, each drawn from one group of "
                    "related documents and rated for helpfulness. Combine what they say, prefer the more "
                    "helpful ones, and cite the groups you use by their ids in square brackets."
                ),
            },
            {"role": "user", "content": f"Question: {query}\n\nPartial answers:\n{notes}"},
        ]
        try:
            out = self.chat(messages, _REDUCE_SCHEMA)
            answer = out["answer"].strip() if isinstance(out, Mapping) and isinstance(out.get("answer"), str) else ""
        except Exception as err:  # a chat model may fail in any way: fall back to the best partial answer
            logger.warning("the reduce call failed: %s", err)
            answer = ""
        if not answer:
            best = helpful[0]
            return GlobalAnswer(f"{best.metadata['graph_answer']} [{best.id}]", hits, calls + 1, reduced=False)
        return GlobalAnswer(answer, hits, calls + 1, reduced=True)

    def _communities(self) -> tuple[list[Community], LateInteractionIndex | None]:
        stored, version = self.store.communities()
        current = self.store.version
        if version != current:
            logger.info("communities are older than the graph (%s != %s): rebuilding them", version, current)
            stored = self.build_communities()
            version = self.store.version
        cache = self._global_cache
        if cache is None or cache[0] != version:
            ranker = None
            if stored:
                ranker = LateInteractionIndex(self.encoder)
                ranker.add([f"{c.title}\n{c.summary}" for c in stored], ids=[c.id for c in stored], show_progress=False)
            self._global_cache = (version, stored, ranker)
        assert self._global_cache is not None
        return self._global_cache[1], self._global_cache[2]

    # ------------------------------------------------------------------ persistence
    def save(self, folder: str | os.PathLike[str]) -> None:
        """Save the passage index (``passages/``) and the settings needed to reopen the graph index
        (``graph_index.json``). An in-memory graph store is written to ``graph/`` too; a Postgres one stays
        where it is and is named in the manifest."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        self.passages.save(folder / "passages")
        store_entry: dict[str, Any] = {"kind": self.store.kind}
        if self.store.kind == "memory":
            save = getattr(self.store, "save", None)
            if save is None:
                msg = "this memory graph store cannot be saved"
                raise InvalidInputError(msg)
            save(folder / "graph")
        manifest = {
            "format": 1,
            "store": store_entry,
            "identity": self.identity.to_dict(),
            "splitter": {"max_words": self.splitter.max_words},
            "synonym_threshold": self.synonym_threshold,
            "synonym_k": self.synonym_k,
        }
        tmp = folder / f".{MANIFEST}.tmp"
        tmp.write_text(json.dumps(manifest, indent=1), encoding="utf-8")
        os.replace(tmp, folder / MANIFEST)

    @classmethod
    def open(
        cls,
        folder: str | os.PathLike[str],
        *,
        store: GraphStore | None = None,
        model: str | Path | Encoder | None = None,
        extractor: Extractor | None = None,
        chat: ChatFunction | None = None,
    ) -> GraphIndex:
        """Reopen a saved graph index: the passage index with its encoder (rebuilt from its record), the
        graph store (the saved in-memory one, or ``store`` for Postgres), the extractor (a
        :class:`~.extract.PhraseExtractor` with the recorded settings unless given)."""
        from ragplug.retrievers.graph.extract import PhraseExtractor
        from ragplug.retrievers.graph.stores import MemoryGraphStore

        folder = Path(folder)
        try:
            manifest = json.loads((folder / MANIFEST).read_text(encoding="utf-8"))
        except FileNotFoundError as err:
            msg = f"{folder} is not a saved graph index (no {MANIFEST})"
            raise StoreCorruptedError(msg) from err
        except ValueError as err:
            msg = f"{folder / MANIFEST} is not valid JSON: {err}"
            raise StoreCorruptedError(msg) from err
        if manifest.get("format") != 1:
            msg = f"{folder / MANIFEST} has format {manifest.get('format')!r}; this ragplug reads format 1"
            raise StoreCorruptedError(msg)
        identity = GraphIdentity.from_dict(manifest["identity"])
        if extractor is None:
            if identity.extractor != PhraseExtractor.name:
                msg = f"this graph was built by {identity.extractor!r}: pass that extractor to open() to add to it"
                logger.info(msg)
            extractor = PhraseExtractor.from_settings(identity.extractor_settings)
        if store is None:
            if manifest["store"]["kind"] != "memory":
                msg = f"the graph lives in a {manifest['store']['kind']} store: pass it as store="
                raise InvalidInputError(msg)
            store = MemoryGraphStore.load(folder / "graph")
        passages = LateInteractionIndex.open(folder / "passages", model, chunk=False)  # passages are cut here
        return cls(
            store,
            passages,
            extractor=extractor,
            chat=chat,
            splitter=PassageSplitter(int(manifest["splitter"]["max_words"])),
            synonym_threshold=float(manifest["synonym_threshold"]),
            synonym_k=int(manifest["synonym_k"]),
        )


def _with(hit: Hit, extra: Mapping[str, Any]) -> Hit:
    from dataclasses import replace

    return replace(hit, metadata={**hit.metadata, **extra})


def _fuse(graph: list[Hit], dense: list[Hit], k: int, dense_weight: float) -> list[Hit]:
    """Score fusion: each passage's walk relevance (its score over the best passage's, in [0, 1]) plus
    ``dense_weight`` times its ColBERT relevance; the walk's evidence is kept, ColBERT's relevance added."""
    fused = {h.id: h.relevance or 0.0 for h in graph}
    first = {h.id: h for h in graph}
    colbert = {h.id: h.relevance or 0.0 for h in dense}
    for hit in dense:
        fused[hit.id] = fused.get(hit.id, 0.0) + dense_weight * colbert[hit.id]
        first.setdefault(hit.id, hit)
    order = sorted(fused, key=lambda i: (-fused[i], i))[:k]
    top = fused[order[0]] if order and fused[order[0]] > 0 else 1.0
    out = []
    for item in order:
        hit = first[item]
        meta = {**hit.metadata, "graph_mode": "hybrid", "colbert_relevance": colbert.get(item)}
        out.append(Hit(hit.id, fused[item], meta, hit.text, hit.parent_id, min(1.0, fused[item] / top)))
    return out


@dataclass(frozen=True)
class GlobalAnswer:
    """The answer of :meth:`GraphIndex.answer_global`: its text, the community hits it was drawn from (with
    their partial answers and cited passages in metadata), the LLM calls made, and whether the reduce step
    wrote it (``False``: the best partial answer, or no community helped)."""

    text: str
    communities: list[Hit]
    llm_calls: int
    reduced: bool

    @property
    def passages(self) -> list[str]:
        """The passages the helpful communities cite."""
        out: dict[str, None] = {}
        for hit in self.communities:
            if hit.metadata.get("graph_answer"):
                out.update(dict.fromkeys(hit.metadata.get("graph_passages", [])))
        return list(out)


_REDUCE_SCHEMA = {
    "type": "object",
    "properties": {"answer": {"type": "string", "maxLength": 2000}},
    "required": ["answer"],
    "additionalProperties": False,
}

_MAP_SCHEMA = {
    "type": "object",
    "properties": {
        "score": {"type": "integer", "minimum": 0, "maximum": 100},
        "answer": {"type": "string", "maxLength": 600},
    },
    "required": ["score", "answer"],
    "additionalProperties": False,
}


def _map_community(chat: ChatFunction, query: str, community: Community) -> tuple[int, str] | None:
    """GraphRAG's map step for one community: the LLM's helpfulness score (0-100) and its partial answer;
    ``None`` when two answers fail validation."""
    messages = [
        {
            "role": "system",
            "content": (
                "You read a summary of a group of related entities from a document collection and judge how "
                "much it helps answer a question. Reply with JSON: score (0 = no help, 100 = answers it) and "
                "answer (what the summary says that bears on the question, in at most three sentences)."
            ),
        },
        {"role": "user", "content": f"Question: {query}\n\nSummary: {community.title}\n{community.summary}"},
    ]
    for _ in range(2):
        try:
            out = chat(messages, _MAP_SCHEMA)
        except Exception as err:  # a chat model may fail in any way; the caller falls back
            logger.warning("community %s: the LLM call failed: %s", community.id, err)
            continue
        if (
            isinstance(out, Mapping)
            and isinstance(out.get("score"), int)
            and not isinstance(out.get("score"), bool)
            and 0 <= out["score"] <= 100
            and isinstance(out.get("answer"), str)
        ):
            return int(out["score"]), out["answer"].strip()
        logger.warning("community %s: the LLM's answer did not validate: %.200r", community.id, out)
    return None
