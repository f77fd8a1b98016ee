"""The LLM-free entity extractor of Graph RAG: capitalised names and key phrases, linked by co-occurrence.

:class:`PhraseExtractor` is the default :class:`~ragplug.retrievers.graph.model.Extractor`. In the spirit of
LazyGraphRAG and GraphRAG's ``fast`` indexing method, it builds the graph without a language model:

* **names** (kind ``"name"``): runs of capitalised words, which may hold short lowercase connectors between
  capitalised words ("Bank of England", "Ludwig van Beethoven"); a possessive ``'s`` ends the name and is
  stripped. A span at the start of a sentence (or after an opening quote, bracket or colon) loses leading
  stopwords ("When Scrooge" → "Scrooge"), and a single capitalised word there is kept only when the passage
  also capitalises it mid-sentence ("Darkness is cheap" gives no name; "Marley was dead ... said Marley"
  does). A name joined by "and" ("Scrooge and Marley") is kept whole and also as its parts. Quoted titles
  in title case (“The Man Who Knew Too Much”) are kept whole. Numbers are never names.
* **key phrases** (kind ``"phrase"``, ``phrases=False`` turns them off): RAKE-style, the maximal runs of
  lowercase non-stopwords of at least three letters, cut at stopwords and punctuation; a run longer than
  ``max_phrase_words`` keeps its last words (an English noun phrase ends in its head noun), and a run of only
  :data:`COMMON_WORDS` ("old man") is dropped.
* **relations**: a :data:`~ragplug.retrievers.graph.model.CO_OCCURS` edge between every two entities of a
  sentence (``window="sentence"``) or of the passage (``window="passage"``), weighted by the number of
  windows they share. Only the first ``max_entities_per_window`` entities of a window (names first) are
  paired, so a long list cannot create a quadratic number of edges.

Why regular expressions and no NLP library: a named-entity or noun-chunk model (spaCy, Stanza, NLTK's
chunkers) needs model files from a hub, and there is none here; DESIGN.md also rules out third-party
re-uploads of spaCy models. Pure Python keeps ``import ragplug`` cheap and the output reproducible on every
machine. The price is English-centric heuristics: see :data:`STOPWORDS` and the tests for what they catch.
"""

from __future__ import annotations

import bisect
import logging
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from itertools import combinations
from typing import Any, Literal

from ragplug._progress import progress_bar, wants_progress
from ragplug.errors import InvalidInputError
from ragplug.retrievers.graph.model import CO_OCCURS, Entity, Extraction, Passage, Relation, entity_key

__all__ = ["COMMON_WORDS", "CONNECTORS", "STOPWORDS", "PhraseExtractor"]

logger = logging.getLogger(__name__)

#: The version of the extraction algorithm, part of :attr:`PhraseExtractor.settings`: raise it whenever a
#: change makes the same passage give other entities or relations.
ALGORITHM_VERSION = 2


def _words(text: str) -> frozenset[str]:
    return frozenset(text.split())


#: Function words, pronouns, auxiliaries, frequent verbs and adverbs, interjections. They cut key phrases,
#: are never a one-word name, and are stripped from the start of a name that opens a sentence.
STOPWORDS: frozenset[str] = _words(
    """
    a about above across after afterwards again against ago ah ahead alas all almost alone along already also
    although always am among amongst an and another any anybody anyhow anyone anything anyway anywhere are
    around as aside at away aye back be became because become becomes becoming been before beforehand began
    begin behind being below beneath beside besides between beyond both but by came can cannot could did do
    does doing done down during each either else elsewhere enough especially even ever every everybody everyone
    everything everywhere except far few for former formerly from further furthermore get gets getting give
    given gives go goes going gone got had hardly has have having he hello hence her here hereby herein hers
    herself hey him himself his how however hundred i if in indeed instead into is it its itself just last
    lately later latter least less let lest like likely made make makes many may maybe me meantime meanwhile
    might mine more moreover most mostly much must my myself namely neither never nevertheless next no nobody
    none nor not nothing now nowhere of off often oh ok okay on once one only onto or other others otherwise
    ought our ours ourselves out over own perhaps please quite rather really said say says see seem seemed
    seeming seems seen several shall she should since so some somebody somehow someone something sometime
    sometimes somewhat somewhere soon still such than that the their theirs them themselves then thence there
    thereafter thereby therefore therein thereupon these they this those though through throughout thus till to
    together too toward towards two under unless until unto up upon us very via was we well were what whatever
    when whence whenever where whereas whereby wherein whether which while whither who whoever whole whom whose
    why will with within without would yes yet you your yours yourself yourselves
    chapter section part figure table page see also et al etc ie eg vs mr mrs ms dr st jr sr prof rev
    ask asked asking bring brought call called cried cry felt find found feel held hold heard hear keep kept
    knew know known knowing leave left look looked looking meant mean put ran replied reply returned run sat
    saw saying seeing set show showed shown sit speak spoke stand stood take taken takes taking tell telling
    think thinking thought told took tried try turned use used want wanted went round come coming forth sure
    believe wish near inside outside amid amidst per despite
    zero three four five six seven eight nine ten eleven twelve twenty thirty forty fifty sixty seventy eighty
    ninety thousand million billion first second third
    """
)

#: Everyday nouns and adjectives: they may sit in a key phrase ("old house") but a phrase made only of them
#: ("old man", "good time") says nothing about the passage and is dropped.
COMMON_WORDS: frozenset[str] = _words(
    """
    able bad best better big day days end fact full good great hand hands head high kind large little long
    lot lots man men new old people person place right small thing things time times way ways woman women
    word words work world year years same different important certain
    """
)

#: Lowercase words that may join two capitalised words inside a name: "Bank of England", "Ludwig van
#: Beethoven", "Order of the Garter". At most two in a row; never at the start or end of a name.
CONNECTORS: frozenset[str] = _words("of the de del della di da du des la le van von der den and for in on upon y")

_HONORIFICS = _words("mr mrs ms dr st jr sr prof rev gen col capt lt sgt mme mlle messrs")
# Words after which a full stop does not end a sentence (besides honorifics and single-letter initials).
_ABBREVIATIONS = _HONORIFICS | _words("vs etc no nos vol fig mt ft co inc ltd corp dept est approx")
# Lowercase words a title keeps in lower case ("The Lord of the Rings").
_TITLE_LOWER = _words("a an the of and or nor but in on at to for with by from as into onto upon")

_WORD = re.compile(r"[^\W\d_]+(?:['’\-][^\W\d_]+)*")
_BLANK_LINE = re.compile(r"\n[ \t\r\f\v]*\n")
_SENTENCE_END = re.compile(r"[.!?…]")
_OPENERS = re.compile(r"[\"“‘(\[:—–]|--")
_QUOTED = re.compile(r"[\"“]([^\"“”\n]{2,100})[\"”]")
_QUOTED_BAD = re.compile(r"[.,!?;:…\d]")
_ABBREV_GAP = re.compile(r"\.[ \t]*\n?[ \t]*")
_CONTRACTION = re.compile(r"['’](?:ll|d|ve|re|m|t|em)$")
# Adverbs in -ly ("anxiously") cut a key phrase; nouns in -ily/-ply/-bly/-fly/-oly ("family") do not.
_ADVERB = re.compile(r"^.{4,}(?<![ipbfo])ly$")

_WINDOWS = ("sentence", "passage")
# A line shorter than this that ends without punctuation is a heading: its line break ends a sentence.
_HEADING_CHARS = 48


@dataclass
class _Token:
    text: str  # the word, possessive 's stripped
    lower: str
    start: int
    end: int
    cap: bool  # first letter upper case
    possessive: bool  # ended in 's (a name ends here)
    contraction: bool  # a lowercase word with an apostrophe other than a possessive ("don't", "it's")
    adjacent: bool  # only whitespace (or an abbreviation's dot) since the previous word
    initial: bool  # opens a sentence, a quotation, a bracket or follows a colon or dash
    sentence: int


def _tokens(text: str) -> list[_Token]:
    """The words of ``text`` with what name and phrase finding needs to know about the gap before each."""
    out: list[_Token] = []
    sentence = 0
    prev_end = 0
    prev_lower = ""
    prev_word = ""
    for match in _WORD.finditer(text):
        start, end = match.span()
        word = match.group()
        gap = text[prev_end:start]
        if not out:
            adjacent, initial = False, True
        elif not gap.strip():
            blank = _BLANK_LINE.search(gap) is not None or _after_heading(text, prev_end, gap)
            adjacent, initial = not blank, blank
            sentence += blank
        elif (prev_lower in _ABBREVIATIONS or (len(prev_word) == 1 and prev_word.isupper())) and (
            _ABBREV_GAP.fullmatch(gap) is not None
        ):
            adjacent, initial = True, False  # "Mr. Fezziwig", "J. B. Lippincott"
        else:
            adjacent = False
            ends = _SENTENCE_END.search(gap) is not None or _BLANK_LINE.search(gap) is not None
            sentence += ends
            initial = ends or _OPENERS.search(gap) is not None
        possessive = False
        if len(word) > 2 and word[-2] in "'’" and word[-1] in "sS":
            word, possessive = word[:-2], True
        lower = word.lower()
        cap = word[0].isupper()
        contraction = _CONTRACTION.search(lower) is not None  # "don't", "I'll": stopwords whatever their case
        cap = cap and not contraction
        out.append(_Token(word, lower, start, end, cap, possessive, contraction, adjacent, initial, sentence))
        prev_end, prev_lower, prev_word = end, lower, word
    return out


def _after_heading(text: str, prev_end: int, gap: str) -> bool:
    """Whether ``gap`` (whitespace) ends a short line: a title or heading ("Ludwig Elsbett\nLudwig Elsbett
    was ...") rather than a line wrapped inside a sentence, whose lines are long."""
    newline = gap.find("\n")
    if newline < 0:
        return False
    line_start = text.rfind("\n", 0, prev_end) + 1
    return prev_end + newline - line_start < _HEADING_CHARS


def _spans(tokens: list[_Token]) -> list[list[int]]:
    """Runs of capitalised words, with at most two connectors between two of them."""
    spans: list[list[int]] = []
    span: list[int] = []
    pending: list[int] = []
    for i, tok in enumerate(tokens):
        joins = bool(span) and tok.adjacent and not tokens[span[-1]].possessive and not tokens[i - 1].possessive
        if tok.cap:
            if joins and tokens[span[-1]].sentence == tok.sentence:
                span.extend(pending)
                span.append(i)
            else:
                if span:
                    spans.append(span)
                span = [i]
            pending = []
        elif joins and tok.lower in CONNECTORS and len(pending) < 2:
            pending.append(i)
        else:
            if span:
                spans.append(span)
            span, pending = [], []
    if span:
        spans.append(span)
    return spans


def _render(tokens: list[_Token], idx: Sequence[int]) -> str:
    words = []
    for i in idx:
        tok = tokens[i]
        words.append(tok.text + "." if tok.lower in _HONORIFICS and tok.cap else tok.text)
    return " ".join(words)


def _is_stop(lower: str, stopwords: frozenset[str]) -> bool:
    return lower in stopwords or len(lower) < 2


@dataclass
class _Found:
    key: str
    name: str
    kind: str
    sentence: int
    tokens: tuple[int, ...] = ()


class PhraseExtractor:
    """Names and key phrases found with regular expressions, linked by co-occurrence; no model, no download.

    Args:
        phrases: also extract RAKE-style key phrases (kind ``"phrase"``), not only capitalised names.
        max_phrase_words: the longest key phrase, in words.
        window: link entities that share a ``"sentence"`` (default) or a ``"passage"``.
        max_entities_per_window: only the first this-many entities of a window (names first) are linked.
        extra_stopwords: words added to :data:`STOPWORDS` (case-insensitive), e.g. a corpus' boilerplate.

    Every setting that changes the output is in :attr:`settings`, with the algorithm's version.

    >>> [x] = PhraseExtractor(phrases=False).extract([Passage("p", "Scrooge's clerk was Bob Cratchit.", "doc")])
    >>> [e.name for e in x.entities], [(r.source, r.target, r.weight) for r in x.relations]
    (['Scrooge', 'Bob Cratchit'], [('bob cratchit', 'scrooge', 1.0)])
    """

    name = "phrase"

    def __init__(
        self,
        *,
        phrases: bool = True,
        max_phrase_words: int = 3,
        window: Literal["sentence", "passage"] = "sentence",
        max_entities_per_window: int = 24,
        extra_stopwords: Iterable[str] = (),
    ) -> None:
        if not isinstance(phrases, bool):
            msg = f"phrases must be True or False, got {phrases!r}"
            raise InvalidInputError(msg)
        if isinstance(max_phrase_words, bool) or not isinstance(max_phrase_words, int) or max_phrase_words < 1:
            msg = f"max_phrase_words must be a positive integer, got {max_phrase_words!r}"
            raise InvalidInputError(msg)
        if window not in _WINDOWS:
            msg = f"window must be one of {_WINDOWS}, got {window!r}"
            raise InvalidInputError(msg)
        cap = max_entities_per_window
        if isinstance(cap, bool) or not isinstance(cap, int) or cap < 2:
            msg = f"max_entities_per_window must be an integer >= 2, got {cap!r}"
            raise InvalidInputError(msg)
        if isinstance(extra_stopwords, str):
            msg = f"extra_stopwords must be a collection of words, not the string {extra_stopwords!r}"
            raise InvalidInputError(msg)
        extra = sorted({str(w).strip().lower() for w in extra_stopwords} - {""})
        self.phrases = phrases
        self.max_phrase_words = max_phrase_words
        self.window = window
        self.max_entities_per_window = cap
        self.extra_stopwords = tuple(extra)
        self._stopwords = STOPWORDS | frozenset(extra)

    @classmethod
    def from_settings(cls, settings: Mapping[str, Any]) -> PhraseExtractor:
        """The extractor that :attr:`settings` describes (a saved graph's record). Keys it does not know
        (another extractor's settings) and the version are not used: comparing the rebuilt extractor's
        settings with the record (:class:`~ragplug.retrievers.graph.model.GraphIdentity`) reports them."""
        if not isinstance(settings, Mapping):
            msg = f"settings must be a mapping like PhraseExtractor().settings, got {settings!r}"
            raise InvalidInputError(msg)
        known = ("phrases", "max_phrase_words", "window", "max_entities_per_window", "extra_stopwords")
        return cls(**{k: settings[k] for k in known if k in settings})

    def __repr__(self) -> str:
        return f"PhraseExtractor({', '.join(f'{k}={v!r}' for k, v in self.settings.items() if k != 'version')})"

    @property
    def settings(self) -> dict[str, Any]:
        """Every setting that changes the output, and the algorithm's version (JSON-serialisable)."""
        return {
            "version": ALGORITHM_VERSION,
            "phrases": self.phrases,
            "max_phrase_words": self.max_phrase_words,
            "window": self.window,
            "max_entities_per_window": self.max_entities_per_window,
            "extra_stopwords": list(self.extra_stopwords),
        }

    # -- finding ---------------------------------------------------------------------------------------------

    def _names(self, text: str, tokens: list[_Token], *, lenient: bool) -> tuple[list[_Found], set[int]]:
        """Names in ``text`` and the indices of the tokens they use. ``lenient`` keeps a single capitalised
        word at the start of a sentence (a query has no other sentences to confirm it)."""
        stop = self._stopwords
        capitalised_inside = {t.lower for t in tokens if t.cap and not t.initial}
        quoted = self._quoted_titles(text, tokens)
        quoted_ranges = [(q.tokens[0], q.tokens[-1]) for q in quoted]
        found: list[_Found] = list(quoted)
        used: set[int] = {i for q in quoted for i in q.tokens}
        for span in _spans(tokens):
            if any(lo <= span[0] <= hi for lo, hi in quoted_ranges):
                continue
            if tokens[span[0]].initial:
                stripped = 0
                while span and (
                    (_is_stop(tokens[span[0]].lower, stop) and tokens[span[0]].lower not in _HONORIFICS)
                    or tokens[span[0]].lower in CONNECTORS
                ):
                    span = span[1:]
                    stripped += 1
                if not span:
                    continue
                first = tokens[span[0]]
                if (
                    not stripped
                    and len(span) == 1
                    and not lenient
                    and first.lower not in capitalised_inside
                    and not first.possessive
                ):
                    continue  # "Darkness is cheap": a capitalised first word, no evidence it is a name
            while span and not tokens[span[-1]].cap:  # cannot happen after _spans, kept for safety
                span = span[:-1]
            self._add_span(tokens, span, found, used)
            if len(span) > 2 and any(tokens[i].lower == "and" and not tokens[i].cap for i in span):
                part: list[int] = []
                for i in [*span, -1]:
                    if i == -1 or (tokens[i].lower == "and" and not tokens[i].cap):
                        while part and not tokens[part[-1]].cap:
                            part.pop()
                        if part:
                            self._add_span(tokens, part, found, used)
                        part = []
                    else:
                        part.append(i)
        return found, used

    def _add_span(self, tokens: list[_Token], span: Sequence[int], found: list[_Found], used: set[int]) -> None:
        stop = self._stopwords
        if all(_is_stop(tokens[i].lower, stop) or not tokens[i].cap for i in span):
            return  # "I", "Oh", "The": no name
        if len(span) == 1 and tokens[span[0]].lower in _HONORIFICS:
            return
        name = _render(tokens, span)
        key = entity_key(name)
        if key:
            found.append(_Found(key, name, "name", tokens[span[0]].sentence, tuple(span)))
            used.update(span)

    def _quoted_titles(self, text: str, tokens: list[_Token]) -> list[_Found]:
        """Quoted text in title case: “A Christmas Carol”, "The Man Who Knew Too Much"."""
        if '"' not in text and "“" not in text:
            return []
        starts = [t.start for t in tokens]
        out = []
        for match in _QUOTED.finditer(text):
            inner = match.group(1).strip()
            if not inner or _QUOTED_BAD.search(inner):
                continue
            lo = bisect.bisect_left(starts, match.start(1))
            hi = bisect.bisect_left(starts, match.end(1))
            idx = list(range(lo, hi))
            if not idx or len(idx) > 8:
                continue
            words = [tokens[i] for i in idx]
            if not (words[0].cap and words[-1].cap) or any(w.possessive for w in words[:-1]):
                continue
            if not all(w.cap or w.lower in _TITLE_LOWER for w in words):
                continue
            if len(words) == 1 and _is_stop(words[0].lower, self._stopwords):
                continue
            name = " ".join(w.text for w in words)
            key = entity_key(name)
            if key:
                out.append(_Found(key, name, "name", words[0].sentence, tuple(idx)))
        return out

    def _phrases(self, tokens: list[_Token], used: set[int]) -> list[_Found]:
        """RAKE-style key phrases: runs of lowercase content words between stopwords and punctuation."""
        stop, common, most = self._stopwords, COMMON_WORDS, self.max_phrase_words
        out: list[_Found] = []
        run: list[_Token] = []

        def close() -> None:
            if run:
                words = run[-most:]
                verb_like = len(words) == 1 and len(words[0].lower) > 4 and words[0].lower.endswith("ed")
                if not verb_like and not all(w.lower in common for w in words):
                    name = " ".join(w.lower for w in words)
                    out.append(_Found(entity_key(name), name, "phrase", words[0].sentence))
                run.clear()

        for i, tok in enumerate(tokens):
            content = (
                i not in used
                and (not tok.cap or tok.initial)
                and not tok.contraction
                and tok.lower not in stop
                and sum(ch.isalpha() for ch in tok.text) >= 3
                and _ADVERB.match(tok.lower) is None
            )
            # A past form ("counted") after a content word is a verb, not part of its phrase ("old man
            # counted"); before one it may be an adjective ("cracked windows").
            verb_like = len(tok.text) > 4 and tok.lower.endswith("ed") and "-" not in tok.text
            if not content or not tok.adjacent or (run and (run[-1].possessive or verb_like)):
                close()
            if content:
                run.append(tok)
        close()
        return out

    def _entities(self, text: str, *, lenient: bool, phrases: bool) -> list[_Found]:
        """Every mention found, names before phrases (a name wins a key both give), deduplicated per window."""
        tokens = _tokens(text)
        if not tokens:
            return []
        names, used = self._names(text, tokens, lenient=lenient)
        found = names + (self._phrases(tokens, used) if phrases else [])
        return found

    # -- the Extractor protocol ------------------------------------------------------------------------------

    def extract(self, passages: Sequence[Passage], *, show_progress: bool | None = None) -> list[Extraction]:
        """One :class:`Extraction` per passage, in order; an empty or whitespace passage gets an empty one."""
        out: list[Extraction] = []
        enabled = wants_progress(show_progress, len(passages))
        with progress_bar(len(passages), desc="extracting entities", unit="passage", enabled=enabled) as bar:
            for n, passage in enumerate(passages, 1):
                out.append(self.extract_one(passage))
                if n % 64 == 0:
                    bar.update(64)
            bar.update(len(passages) % 64)
        return out

    def extract_one(self, passage: Passage) -> Extraction:
        """The :class:`Extraction` of one passage."""
        text = getattr(passage, "text", None)
        if not isinstance(text, str):
            msg = f"passage {getattr(passage, 'id', passage)!r} has no text (a str), got {text!r}"
            raise InvalidInputError(msg)
        found = self._entities(text, lenient=False, phrases=self.phrases)
        if not found:
            return Extraction(passage_id=passage.id)
        entities: dict[str, Entity] = {}
        for f in found:
            known = entities.get(f.key)
            if known is None or (known.kind == "phrase" and f.kind == "name"):
                entities[f.key] = Entity(key=f.key, name=f.name, kind=f.kind)
        return Extraction(passage_id=passage.id, entities=tuple(entities.values()), relations=self._relations(found))

    def _relations(self, found: list[_Found]) -> tuple[Relation, ...]:
        windows: dict[int, dict[str, bool]] = {}  # window -> key -> is a name (insertion ordered)
        for f in found:
            keys = windows.setdefault(f.sentence if self.window == "sentence" else 0, {})
            keys[f.key] = keys.get(f.key, False) or f.kind == "name"
        weights: dict[tuple[str, str], int] = {}
        for keys in windows.values():
            if len(keys) < 2:
                continue
            ordered = [k for k, is_name in keys.items() if is_name] + [k for k, is_name in keys.items() if not is_name]
            for a, b in combinations(sorted(ordered[: self.max_entities_per_window]), 2):
                weights[(a, b)] = weights.get((a, b), 0) + 1
        return tuple(Relation(a, b, CO_OCCURS, float(w)) for (a, b), w in weights.items())

    def query_entities(self, query: str) -> list[Entity]:
        """The names and phrases of ``query``, found as in a passage but more leniently: a capitalised first
        word counts as a name ("Scrooge?"), and phrases are returned even with ``phrases=False`` (a lowercase
        query, "what did scrooge say", still names "scrooge", whose key is the name's key)."""
        if not isinstance(query, str):
            msg = f"query must be a str, got {type(query).__name__}: {query!r}"
            raise InvalidInputError(msg)
        entities: dict[str, Entity] = {}
        for f in self._entities(query, lenient=True, phrases=True):
            known = entities.get(f.key)
            if known is None or (known.kind == "phrase" and f.kind == "name"):
                entities[f.key] = Entity(key=f.key, name=f.name, kind=f.kind)
        return list(entities.values())
