"""Entity and relation extraction by a chat model, with validation, retries and a per-passage cache.

:class:`LLMExtractor` asks a :class:`~ragplug.retrievers.graph.model.ChatFunction` (any chat model that
answers a JSON schema: ragplug's local ``LoRAModel`` through :func:`lora_chat_function`, a LangChain chat
model through ``ragplug.plugins.langchain.langchain_chat_function``, a LlamaIndex LLM through
``ragplug.plugins.llamaindex.llamaindex_chat_function``) for the entities of each passage (name, type, one-line
description) and the relations it states between them, one call per passage, as GraphRAG and nano-graphrag
do. The schema bounds the answer (``maxItems``, string lengths), so a grammar-constrained model cannot ramble.

Answers are checked, not trusted: a non-object, a missing list or an item of the wrong type is an invalid
answer and the passage is asked again (``retries`` times), as is a call that raises; a passage that never
gets a valid answer is skipped (an empty :class:`~ragplug.retrievers.graph.model.Extraction`) and named in
the warning that ends the run and in :attr:`LLMExtractor.last_report`. Entity keys are normalised with
:func:`~ragplug.retrievers.graph.model.entity_key`. A relation whose endpoint is not among the answer's
entities keeps that endpoint as a new entity of kind ``"unknown"`` (the model stated the relation; dropping
it would lose what the passage says), as GraphRAG does; a relation from an entity to itself is dropped.

:class:`ExtractionCache` keeps each valid answer in a JSON file named by the sha256 of the model name, the
prompt version and text, the schema and the passage, written atomically (a temporary file in the same
folder, then ``os.replace``), so a rerun over the same passages makes no chat call and a crash never leaves a
half-written entry. Only the standard library is used here: the chat function is the caller's choice.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import tempfile
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ragplug._checks import integer_at_least as _positive
from ragplug._progress import progress_bar, wants_progress
from ragplug.adapters.lora.chat_function import lora_chat_function  # where it lived first
from ragplug.chat import answer_object
from ragplug.errors import InvalidInputError
from ragplug.retrievers.graph.extract import PhraseExtractor
from ragplug.retrievers.graph.model import ChatFunction, Entity, Extraction, Passage, Relation, entity_key

__all__ = [
    "PROMPT_VERSION",
    "ExtractionCache",
    "ExtractionReport",
    "LLMExtractor",
    "extraction_schema",
    "lora_chat_function",
]

logger = logging.getLogger(__name__)

#: The version of the prompt and of the answer's validation: part of :attr:`LLMExtractor.settings` and of
#: every cache key. Raise it whenever a change makes the same answer give other entities or relations.
PROMPT_VERSION = 1

#: Longest strings the schema allows (characters).
NAME_CHARS, TYPE_CHARS, DESCRIPTION_CHARS, LABEL_CHARS = 100, 40, 200, 60

#: The kind of an entity the model gave no type, or that only appears as a relation's endpoint.
UNKNOWN_KIND = "unknown"
#: The label of a relation the model gave no label.
DEFAULT_LABEL = "related to"

SYSTEM_PROMPT = """\
You build a knowledge graph from one passage of text at a time.

First list the entities the passage mentions that matter to what it says: people, organisations, places, \
works, events, objects and ideas. Give at most {max_entities}. For each, give its name exactly as the passage \
writes it (the fullest form it uses), a short lower-case type such as person, organisation, place, work, \
event, object or concept, and a description of one sentence that uses only what the passage says.

Then list at most {max_relations} relations that the passage states between two of those entities. For each, \
give the source and the target by the names you listed and a short lower-case label for how they are \
related, such as "works for", "is the partner of" or "lives in".

Leave out anything the passage does not support. If it names no entity, answer with empty lists. \
Answer with one JSON object and nothing else."""

_SPACE = re.compile(r"\s+")
_HEX64 = re.compile(r"[0-9a-f]{64}")


def extraction_schema(max_entities: int, max_relations: int) -> dict[str, Any]:
    """The JSON schema of an answer: ``{"entities": [{name, type, description}], "relations": [{source,
    target, relation}]}``, with at most ``max_entities`` / ``max_relations`` items and bounded strings."""

    def text(most: int, least: int = 0) -> dict[str, Any]:
        return {"type": "string", "minLength": least, "maxLength": most}

    entity = {
        "type": "object",
        "properties": {"name": text(NAME_CHARS, 1), "type": text(TYPE_CHARS), "description": text(DESCRIPTION_CHARS)},
        "required": ["name", "type", "description"],
        "additionalProperties": False,
    }
    relation = {
        "type": "object",
        "properties": {"source": text(NAME_CHARS, 1), "target": text(NAME_CHARS, 1), "relation": text(LABEL_CHARS)},
        "required": ["source", "target", "relation"],
        "additionalProperties": False,
    }
    return {
        "title": "graph_extraction",
        "description": "The entities of a passage and the relations it states between them.",
        "type": "object",
        "properties": {
            "entities": {"type": "array", "items": entity, "maxItems": max_entities},
            "relations": {"type": "array", "items": relation, "maxItems": max_relations},
        },
        "required": ["entities", "relations"],
        "additionalProperties": False,
    }


# -- the cache -----------------------------------------------------------------------------------------------


class ExtractionCache:
    """Answers kept on disk, one JSON file per key under ``folder/<first two hex digits>/<key>.json``.

    Writes are atomic (a temporary file in the same folder, then ``os.replace``); a file that cannot be
    read back (truncated, not JSON, another key) is logged and treated as missing, so the caller recomputes
    and overwrites it. Safe to share between threads and processes: the last writer of a key wins, and every
    writer of a key writes the same answer's key."""

    def __init__(self, folder: str | Path) -> None:
        if not isinstance(folder, str | Path) or not str(folder).strip():
            msg = f"the cache folder must be a path, got {folder!r}"
            raise InvalidInputError(msg)
        self.folder = Path(folder)
        if self.folder.exists() and not self.folder.is_dir():
            msg = f"the cache folder {str(self.folder)!r} exists and is not a folder"
            raise InvalidInputError(msg)
        self.folder.mkdir(parents=True, exist_ok=True)

    def __repr__(self) -> str:
        return f"ExtractionCache({str(self.folder)!r})"

    def __len__(self) -> int:
        return sum(1 for _ in self.folder.glob("??/*.json"))

    @staticmethod
    def key(*parts: Any) -> str:
        """The sha256 (hex) of ``parts`` as canonical JSON (sorted keys): equal parts, equal keys."""
        blob = json.dumps(parts, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
        return hashlib.sha256(blob.encode("utf-8")).hexdigest()

    def path(self, key: str) -> Path:
        """The file of ``key`` (a key from :meth:`key`)."""
        if not isinstance(key, str) or _HEX64.fullmatch(key) is None:
            msg = f"a cache key is 64 lower-case hex digits (see ExtractionCache.key), got {key!r}"
            raise InvalidInputError(msg)
        return self.folder / key[:2] / f"{key}.json"

    def get(self, key: str) -> Any | None:
        """The value stored under ``key``; None when there is none or its file is unreadable (logged)."""
        path = self.path(key)
        try:
            raw = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return None
        except (OSError, UnicodeDecodeError) as err:
            logger.warning("ignoring unreadable extraction cache file %s (%s); recomputing it", path, err)
            return None
        try:
            entry = json.loads(raw)
        except ValueError as err:
            logger.warning("ignoring corrupt extraction cache file %s (%s); recomputing it", path, err)
            return None
        if not isinstance(entry, dict) or entry.get("key") != key or "value" not in entry:
            logger.warning("ignoring extraction cache file %s: it does not hold the entry of its key", path)
            return None
        return entry["value"]

    def put(self, key: str, value: Any) -> None:
        """Store ``value`` (JSON-serialisable) under ``key``, atomically."""
        path = self.path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        data = json.dumps({"key": key, "value": value}, ensure_ascii=False)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{key[:8]}-", suffix=".tmp")
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as handle:
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise


# -- validation ----------------------------------------------------------------------------------------------


class _InvalidAnswer(Exception):
    """An answer that does not have the schema's shape (internal: the passage is asked again)."""


def _clean(value: Any, what: str, most: int) -> str:
    if value is None:
        return ""
    if not isinstance(value, str):
        msg = f"{what} is a {type(value).__name__}, not a string: {value!r}"
        raise _InvalidAnswer(msg)
    return _SPACE.sub(" ", value).strip()[:most]


def _items(answer: Mapping[str, Any], field_name: str, required: bool) -> list[Mapping[str, Any]]:
    items = answer.get(field_name)
    if items is None and not required:
        return []
    if not isinstance(items, list):
        msg = f"{field_name!r} is not a list: {items!r}"[:300]
        raise _InvalidAnswer(msg)
    for item in items:
        if not isinstance(item, Mapping):
            msg = f"an item of {field_name!r} is not an object: {item!r}"[:300]
            raise _InvalidAnswer(msg)
    return items


def _parse_answer(
    answer: Any, passage_id: str, *, max_entities: int, max_relations: int
) -> tuple[tuple[Entity, ...], tuple[Relation, ...]]:
    """The entities and relations of one answer, checked and normalised; :class:`_InvalidAnswer` when its
    shape is wrong. Items beyond the limits (a model without a grammar may give more) are cut; entities with
    an empty key are dropped; relation endpoints missing from the entities are added as ``"unknown"``."""
    try:
        answer = answer_object(answer)
    except ValueError as err:
        raise _InvalidAnswer(str(err)) from err
    entities: dict[str, Entity] = {}
    for item in _items(answer, "entities", required=True)[:max_entities]:
        name = _clean(item.get("name"), "an entity's name", NAME_CHARS)
        kind = _clean(item.get("type"), f"the type of {name!r}", TYPE_CHARS).lower() or UNKNOWN_KIND
        description = _clean(item.get("description"), f"the description of {name!r}", DESCRIPTION_CHARS)
        key = entity_key(name)
        if not key:
            continue
        known = entities.get(key)
        if known is None:
            entities[key] = Entity(key=key, name=name, kind=kind, description=description)
        elif not known.description and description:  # the first mention names it; a later one may describe it
            entities[key] = Entity(key=key, name=known.name, kind=known.kind, description=description)
    weights: dict[tuple[str, str, str], float] = {}
    for item in _items(answer, "relations", required=False)[:max_relations]:
        ends = []
        for end in ("source", "target"):
            name = _clean(item.get(end), f"a relation's {end}", NAME_CHARS)
            key = entity_key(name)
            if key and key not in entities:
                entities[key] = Entity(key=key, name=name, kind=UNKNOWN_KIND)
            ends.append(key)
        label = _clean(item.get("relation"), "a relation's label", LABEL_CHARS).lower() or DEFAULT_LABEL
        source, target = ends
        if not source or not target or source == target:
            continue
        weights[(source, target, label)] = weights.get((source, target, label), 0.0) + 1.0
    relations = tuple(Relation(s, t, label, w) for (s, t, label), w in weights.items())
    if not entities:
        logger.debug("passage %s: the model named no entity", passage_id)
    return tuple(entities.values()), relations


# -- the extractor -------------------------------------------------------------------------------------------


@dataclass
class ExtractionReport:
    """What the last :meth:`LLMExtractor.extract` did.

    ``calls``: chat calls made (retries included); ``cache_hits``: passages answered from the cache;
    ``retried``: passages that needed more than one call; ``failed``: ids of passages skipped after every
    attempt failed, with the last reason in ``reasons``; ``empty``: ids of passages that gave no entity
    (blank text, or a valid answer with no entity)."""

    passages: int = 0
    calls: int = 0
    cache_hits: int = 0
    retried: int = 0
    failed: list[str] = field(default_factory=list)
    empty: list[str] = field(default_factory=list)
    reasons: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "passages": self.passages,
            "calls": self.calls,
            "cache_hits": self.cache_hits,
            "retried": self.retried,
            "failed": list(self.failed),
            "empty": list(self.empty),
            "reasons": dict(self.reasons),
        }


@dataclass
class _Outcome:
    extraction: Extraction
    calls: int = 0
    cache_hit: bool = False
    failure: str | None = None


class LLMExtractor:
    """Entities (name, type, description) and stated relations from a chat model, one call per passage.

    Args:
        chat: answers messages with a JSON object valid against a schema (see
            :class:`~ragplug.retrievers.graph.model.ChatFunction`); it may be called from ``max_workers``
            threads at once.
        model_name: names the model in :attr:`settings` and in cache keys: a graph built with one model is
            not extended with another's extractions, and a cache never returns another model's answers.
        cache: a folder (or an :class:`ExtractionCache`) keeping each passage's answer; None keeps none.
        retries: how many more times a passage is asked after an invalid answer or an exception.
        max_entities, max_relations: the most items an answer may hold (the schema's ``maxItems``).
        fallback_queries: finds the entities of search queries (default: a :class:`PhraseExtractor`).
        max_workers: passages asked at once (threads). A local ``LoRAModel`` batches concurrent requests
            into shared ``generate`` calls, so a few workers speed it up; 1 asks one passage at a time.
    """

    name = "llm"

    def __init__(
        self,
        chat: ChatFunction | Callable[..., Any],
        *,
        model_name: str,
        cache: str | Path | ExtractionCache | None = None,
        retries: int = 2,
        max_entities: int = 12,
        max_relations: int = 16,
        fallback_queries: PhraseExtractor | None = None,
        max_workers: int = 1,
    ) -> None:
        if not callable(chat):
            msg = f"chat must be a chat function (messages, schema) -> JSON object, got {chat!r}"
            raise InvalidInputError(msg)
        if not isinstance(model_name, str) or not model_name.strip():
            msg = f"model_name must be a non-empty string naming the chat model, got {model_name!r}"
            raise InvalidInputError(msg)
        self.chat = chat
        self.model_name = model_name.strip()
        self.retries = _positive(retries, "retries", least=0)
        self.max_entities = _positive(max_entities, "max_entities")
        self.max_relations = _positive(max_relations, "max_relations", least=0)
        self.max_workers = _positive(max_workers, "max_workers")
        if cache is None or isinstance(cache, ExtractionCache):
            self.cache = cache
        elif isinstance(cache, str | Path):
            self.cache = ExtractionCache(cache)
        else:
            msg = f"cache must be a folder, an ExtractionCache or None, got {cache!r}"
            raise InvalidInputError(msg)
        if fallback_queries is not None and not isinstance(fallback_queries, PhraseExtractor):
            msg = f"fallback_queries must be a PhraseExtractor or None, got {fallback_queries!r}"
            raise InvalidInputError(msg)
        self.fallback_queries = fallback_queries or PhraseExtractor()
        self.schema = extraction_schema(self.max_entities, self.max_relations)
        self.system_prompt = SYSTEM_PROMPT.format(max_entities=self.max_entities, max_relations=self.max_relations)
        self.last_report = ExtractionReport()

    def __repr__(self) -> str:
        return (
            f"LLMExtractor(model_name={self.model_name!r}, cache={self.cache!r}, retries={self.retries}, "
            f"max_entities={self.max_entities}, max_relations={self.max_relations})"
        )

    @property
    def settings(self) -> dict[str, Any]:
        """What changes the output: the model, the prompt's version and the answer's limits (JSON)."""
        return {
            "model_name": self.model_name,
            "prompt_version": PROMPT_VERSION,
            "max_entities": self.max_entities,
            "max_relations": self.max_relations,
            "max_chars": {
                "name": NAME_CHARS,
                "type": TYPE_CHARS,
                "description": DESCRIPTION_CHARS,
                "relation": LABEL_CHARS,
            },
        }

    def messages(self, text: str) -> list[dict[str, str]]:
        """The chat messages that ask for the entities and relations of ``text``."""
        return [
            {"role": "system", "content": self.system_prompt},
            {"role": "user", "content": f"Passage:\n{text.strip()}"},
        ]

    def cache_key(self, text: str) -> str:
        """The cache key of a passage's answer: model, prompt version and text, schema, passage text."""
        return ExtractionCache.key(self.model_name, PROMPT_VERSION, self.system_prompt, self.schema, text)

    def _parse(self, answer: Any, passage_id: str) -> Extraction:
        entities, relations = _parse_answer(
            answer, passage_id, max_entities=self.max_entities, max_relations=self.max_relations
        )
        return Extraction(passage_id=passage_id, entities=entities, relations=relations)

    def _one(self, passage: Passage) -> _Outcome:
        text = getattr(passage, "text", None)
        if not isinstance(text, str):
            msg = f"passage {getattr(passage, 'id', passage)!r} has no text (a str), got {text!r}"
            raise InvalidInputError(msg)
        if not text.strip():
            return _Outcome(Extraction(passage_id=passage.id))
        key = self.cache_key(text) if self.cache is not None else ""
        if self.cache is not None:
            cached = self.cache.get(key)
            if cached is not None:
                try:
                    return _Outcome(self._parse(cached, passage.id), cache_hit=True)
                except _InvalidAnswer as err:
                    logger.warning("ignoring the cached answer for passage %s (%s); asking again", passage.id, err)
        messages = self.messages(text)
        reason = ""
        for attempt in range(1, self.retries + 2):
            try:
                answer = self.chat(messages, self.schema)
                extraction = self._parse(answer, passage.id)
            except _InvalidAnswer as err:
                reason = f"invalid answer: {err}"
            except Exception as err:  # any failure of the caller's model is retried, then reported
                reason = f"{type(err).__name__}: {err}"
            else:
                if self.cache is not None:
                    try:
                        self.cache.put(key, json.loads(answer) if isinstance(answer, str) else answer)
                    except (OSError, TypeError, ValueError) as err:  # a full disk must not lose the answer
                        logger.warning("could not cache the answer for passage %s: %s", passage.id, err)
                return _Outcome(extraction, calls=attempt)
            logger.debug("passage %s, attempt %d of %d: %s", passage.id, attempt, self.retries + 1, reason)
        return _Outcome(Extraction(passage_id=passage.id), calls=self.retries + 1, failure=reason)

    def extract(self, passages: Sequence[Passage], *, show_progress: bool | None = None) -> list[Extraction]:
        """One :class:`Extraction` per passage, in order. A passage whose every attempt failed gets an empty
        extraction and is named in :attr:`last_report` and in a logged warning; nothing is raised for it."""
        report = ExtractionReport(passages=len(passages))
        outcomes: list[_Outcome] = []
        # Each passage is a model call, so with show_progress=None a bar shows as soon as there are a few.
        enabled = len(passages) > 8 if show_progress is None else wants_progress(show_progress, len(passages))
        with progress_bar(len(passages), desc="extracting entities (LLM)", unit="passage", enabled=enabled) as bar:
            if self.max_workers == 1 or len(passages) < 2:
                for passage in passages:
                    outcomes.append(self._one(passage))
                    bar.update(1)
            else:
                with ThreadPoolExecutor(self.max_workers, thread_name_prefix="ragplug-extract") as pool:
                    for outcome in pool.map(self._one, passages):
                        outcomes.append(outcome)
                        bar.update(1)
        for outcome in outcomes:
            pid = outcome.extraction.passage_id
            report.calls += outcome.calls
            report.cache_hits += outcome.cache_hit
            report.retried += outcome.calls > 1
            if outcome.failure is not None:
                report.failed.append(pid)
                report.reasons[pid] = outcome.failure
            elif not outcome.extraction.entities:
                report.empty.append(pid)
        self.last_report = report
        if report.failed:
            more = len(report.failed) - 20
            shown = ", ".join(report.failed[:20]) + (f" and {more} more" if more > 0 else "")
            logger.warning(
                "LLM extraction skipped %d of %d passages after %d attempts each: %s (last error of %s: %s)",
                len(report.failed),
                len(passages),
                self.retries + 1,
                shown,
                report.failed[0],
                report.reasons[report.failed[0]],
            )
        logger.info(
            "LLM extraction: %d passages, %d chat calls, %d cache hits, %d retried, %d skipped, %d empty",
            len(passages),
            report.calls,
            report.cache_hits,
            report.retried,
            len(report.failed),
            len(report.empty),
        )
        return [outcome.extraction for outcome in outcomes]

    def query_entities(self, query: str) -> list[Entity]:
        """The entities of a search query, found by :attr:`fallback_queries` (a :class:`PhraseExtractor`):
        a chat call per query would make every search slow and costly, and a query's names are usually
        written as the passages write them."""
        return self.fallback_queries.query_entities(query)
