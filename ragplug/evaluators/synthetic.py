"""A synthetic world of fictional people for knowledge-injection experiments (RAG vs LoRA), offline.

:func:`make_world` draws people with a unique fictional name (first + last, from built-in lists) and five
attributes (birthplace city, occupation, employer company, pet, favourite colour), each value one word from a
small closed vocabulary, and writes one short passage per person from templated sentences in a random order,
with pronouns for some mentions, so a reader has to find the sentence that answers, not count positions.

People are split in two:

* ``reader_people`` are only for pretraining a base reader (``benchmarks/knowledge_reader.py``): it learns
  to answer from passages and to recall facts it was trained on, never seeing a test person.
* ``test_people`` are the experiment. Each of their facts has a kind:

  - ``"trained"``: in LoRA's closed-book training pairs and in the corpus;
  - ``"updated"``: LoRA is trained on the OLD value, the corpus passage states the NEW one, and the expected
    answer is the new value (``QAItem.old_answer`` is the old one);
  - ``"unseen"``: only in the corpus, never in LoRA training.

Every value is a single word, so answers are graded by exact match. Everything is plain data (strings,
tuples, dicts), drawn with :class:`random.Random` from one seed, so the same seed gives the same world on
every machine; :meth:`World.to_jsonl` / :meth:`World.from_jsonl` round-trip it.

Passages handed to a reader together are joined by :func:`format_context` (a blank line between passages),
the layout the reader in ``benchmarks/models/knowledge_reader`` was trained on.
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from ragplug.errors import DatasetError, InvalidInputError

__all__ = [
    "ATTRIBUTES",
    "KINDS",
    "Attribute",
    "LoRAPair",
    "Person",
    "QAItem",
    "RaftItem",
    "World",
    "format_context",
    "make_world",
    "render_passage",
    "vocabulary",
]

Kind = Literal["trained", "updated", "unseen"]
KINDS: tuple[str, ...] = ("trained", "updated", "unseen")
FORMAT = "ragplug-synthetic-world/1"

# Invented first names (30 per pronoun) and surnames: no full name is a real famous person's.
# fmt: off
MALE = (
    "Aldric", "Bramwel", "Corvan", "Dastor", "Edrin", "Faelan", "Garrow", "Halvard", "Ismer", "Jorvik", "Lorcan",
    "Madric", "Nevin", "Orrin", "Perrin", "Quentor", "Rovan", "Soren", "Tobric", "Ulric", "Varno", "Wendel", "Xavor",
    "Yeldor", "Zarek", "Anselm", "Brennic", "Caddoc", "Doran", "Kelvar",
)
FEMALE = (
    "Ailsa", "Brisa", "Calla", "Delwen", "Elsra", "Fenna", "Gilda", "Hessa", "Iselle", "Jorna", "Kaela", "Lirra",
    "Maren", "Nessa", "Orla", "Pella", "Quilla", "Rhosyn", "Selka", "Tamsin", "Ulla", "Vesna", "Wenna", "Xyla", "Yara",
    "Zinnia", "Amara", "Bettra", "Corra", "Dalla",
)
SURNAMES = (
    "Quillet", "Marrow", "Ashgrove", "Brackwater", "Coldwell", "Dunmore", "Emberly", "Fairholt", "Greymarch", "Hollins",
    "Ironwood", "Jessup", "Kettering", "Larkspur", "Mallory", "Northcott", "Oakhart", "Pennock", "Quarry", "Redfern",
    "Saltmarsh", "Thornbury", "Underhill", "Vantreight", "Wexley", "Yarrowby", "Zellner", "Alderton", "Blackwood",
    "Caskett", "Dorrance", "Elmsworth", "Fennick", "Gallow", "Harrowgate", "Inchley", "Jaxley", "Kimber", "Loxley",
    "Merriweather", "Nettleford", "Orwin", "Pemberton", "Quade", "Rookwood", "Stavely", "Tillman", "Upton", "Vexley",
    "Winterbourne", "Yatesby", "Ambrose", "Birchall", "Crowther", "Dewhurst", "Everard", "Foxley", "Greaves",
    "Hazelwood", "Kirkby",
)
# Attribute values: one word each, fictional places and companies.
CITIES = (
    "Tarsk", "Vellmoor", "Ostrel", "Brindle", "Calder", "Dunhollow", "Eskar", "Farrow", "Glimmerby",
    "Harth", "Isenmark", "Jovia", "Kells", "Lunmere", "Marisk", "Norrow", "Ombry", "Pellin", "Quorra",
    "Raskel", "Sablen", "Tovik", "Ulmsted", "Yssel",
)
OCCUPATIONS = (
    "baker", "carpenter", "nurse", "pilot", "teacher", "plumber", "chemist", "farmer", "tailor", "lawyer",
    "dentist", "architect", "librarian", "butcher", "painter", "sailor", "mechanic", "jeweller", "florist",
    "surveyor",
)
COMPANIES = (
    "Zentrix", "Orbisco", "Kalvane", "Mirelta", "Dovetech", "Quantella", "Brightforge", "Nexora",
    "Veltrane", "Corvaxa", "Lumidyne", "Starmill", "Pyralis", "Halcyra", "Tessaline", "Ravencrest",
    "Solvanta", "Ironleaf", "Glimmtek", "Axelora",
)
PETS = (
    "cat", "dog", "ferret", "parrot", "rabbit", "hamster", "tortoise", "goldfish", "canary", "lizard",
    "gecko", "iguana", "chinchilla", "hedgehog", "pony", "goat",
)
COLOURS = (
    "red", "blue", "green", "yellow", "purple", "orange", "teal", "crimson", "amber", "violet", "indigo",
    "maroon", "olive", "silver", "turquoise", "magenta",
)
# fmt: on


@dataclass(frozen=True)
class Attribute:
    """One kind of fact: its closed vocabulary, the sentences that state it, the questions that ask it.

    Statement templates use ``{S}`` (subject: the full name or He/She), ``{s}`` (the same, lower-case
    pronoun), ``{P}`` (possessive: "<name>'s" or His/Her), ``{N}`` (always the full name), ``{a}`` (a/an
    for the value) and ``{v}`` (the value). Question templates use ``{N}``.
    """

    name: str
    values: tuple[str, ...]
    statements: tuple[str, ...]
    questions: tuple[str, ...]


ATTRIBUTES: dict[str, Attribute] = {
    a.name: a
    for a in (
        Attribute(
            "birthplace",
            CITIES,
            (
                "{S} was born in {v}.",
                "{v} is the birthplace of {N}.",
                "{S} comes from {v}, where {s} was born.",
                "{P} place of birth is {v}.",
            ),
            ("Where was {N} born?", "In which city was {N} born?"),
        ),
        Attribute(
            "occupation",
            OCCUPATIONS,
            ("{S} works as {a} {v}.", "By trade, {s} is {a} {v}.", "{P} job is {v}.", "{S} earns a living as {a} {v}."),
            ("What is the occupation of {N}?", "What does {N} do for a living?"),
        ),
        Attribute(
            "employer",
            COMPANIES,
            ("{S} is employed by {v}.", "{P} employer is {v}.", "{v} employs {N}.", "{S} works for {v}."),
            ("Which company employs {N}?", "Who is the employer of {N}?"),
        ),
        Attribute(
            "pet",
            PETS,
            ("{S} has a pet {v}.", "{P} pet is {a} {v}.", "At home, {s} keeps {a} {v}."),
            ("What pet does {N} have?", "What kind of pet does {N} keep?"),
        ),
        Attribute(
            "colour",
            COLOURS,
            (
                "{P} favourite colour is {v}.",
                "{S} likes {v} more than any other colour.",
                "Of all colours, {s} prefers {v}.",
            ),
            ("What is the favourite colour of {N}?", "Which colour does {N} like best?"),
        ),
    )
}
PRONOUNS = {"he": ("He", "he", "His"), "she": ("She", "she", "Her")}


@dataclass(frozen=True)
class Person:
    """A fictional person. ``facts`` are the current values; ``previous`` holds the old value of each fact
    that was updated (test people only); ``kinds`` the kind of each fact (test people only, else empty)."""

    passage_id: str
    first: str
    last: str
    pronoun: Literal["he", "she"]
    split: Literal["reader", "test"]
    facts: dict[str, str]
    previous: dict[str, str] = field(default_factory=dict)
    kinds: dict[str, str] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return f"{self.first} {self.last}"

    @property
    def old_facts(self) -> dict[str, str]:
        """The facts before the update (the values LoRA is trained on)."""
        return {**self.facts, **self.previous}


@dataclass(frozen=True)
class LoRAPair:
    """A closed-book training pair for the LoRA arm (``answer`` is the OLD value for an updated fact)."""

    question: str
    answer: str
    passage_id: str
    attribute: str
    kind: str

    def as_example(self) -> dict[str, str]:
        """The pair as a ``train_lora`` example (question and answer only: closed book)."""
        return {"question": self.question, "answer": self.answer}


@dataclass(frozen=True)
class QAItem:
    """A test question about a test person's fact. ``answer`` is the current value (the one in the corpus);
    ``old_answer`` is the value LoRA was trained on for an updated fact, else None. ``paraphrase`` asks the
    same thing with another question template."""

    id: str
    question: str
    answer: str
    kind: str
    passage_id: str
    attribute: str
    person: str
    old_answer: str | None = None
    paraphrase: str = ""


@dataclass(frozen=True)
class RaftItem:
    """A RAFT-style training example: a question with its gold passage among distractors, as the corpus was
    before the update (so an updated fact's gold passage states the old value, which is the ``answer``).
    ``passages`` are texts in context order; ``gold_index`` is the gold passage's position, None when the
    example was drawn without it."""

    question: str
    answer: str
    passage_id: str
    attribute: str
    kind: str
    passages: tuple[str, ...]
    distractor_ids: tuple[str, ...]
    gold_index: int | None

    def as_example(self) -> dict[str, str]:
        """The item as a ``train_lora`` example, its passages joined by :func:`format_context`."""
        return {"question": self.question, "answer": self.answer, "context": format_context(self.passages)}


@dataclass(frozen=True)
class World:
    """A synthetic world: people, corpora and question sets (see the module docstring).

    ``corpus`` maps passage id to the current passage of every person (test people's after the update,
    reader people's as distractors for retrieval); ``old_corpus`` holds the test people's passages before
    the update. Use :meth:`passage_ids` for the test people's ids only.
    """

    seed: int
    settings: dict[str, Any]
    people: tuple[Person, ...]
    corpus: dict[str, str]
    old_corpus: dict[str, str]
    lora_train: tuple[LoRAPair, ...]
    test_questions: tuple[QAItem, ...]
    raft_train: tuple[RaftItem, ...]

    @property
    def reader_people(self) -> tuple[Person, ...]:
        return tuple(p for p in self.people if p.split == "reader")

    @property
    def test_people(self) -> tuple[Person, ...]:
        return tuple(p for p in self.people if p.split == "test")

    def person(self, passage_id: str) -> Person:
        for p in self.people:
            if p.passage_id == passage_id:
                return p
        msg = f"no person has passage id {passage_id!r}"
        raise InvalidInputError(msg)

    def passage_ids(self, split: Literal["reader", "test"] = "test") -> list[str]:
        return [p.passage_id for p in self.people if p.split == split]

    def lora_examples(self) -> list[dict[str, str]]:
        """``lora_train`` as ``train_lora`` examples (closed book)."""
        return [pair.as_example() for pair in self.lora_train]

    def raft_examples(self) -> list[dict[str, str]]:
        """``raft_train`` as ``train_lora`` examples (question, answer, context)."""
        return [item.as_example() for item in self.raft_train]

    def distractors(self, passage_id: str, k: int, *, seed: int = 0, split: str = "test") -> list[str]:
        """``k`` passage ids of other people in ``split``, about half of them sharing the first or last name
        with ``passage_id``'s person when there are such people (the distractors a name-matching retriever
        would bring), drawn from ``seed`` and ``passage_id``."""
        rng = random.Random(f"{seed}/{passage_id}/{k}")
        return _distractors(self.people, self.person(passage_id), k, rng, split)

    def to_jsonl(self, path: str | Path) -> Path:
        """Write the world to ``path``, one JSON record per line (a header, then people, passages, questions)."""
        path = Path(path)
        lines = [json.dumps({"type": "world", "format": FORMAT, "seed": self.seed, "settings": self.settings})]
        lines += [json.dumps({"type": "person", **asdict(p)}) for p in self.people]
        lines += [json.dumps({"type": "passage", "id": k, "text": v}) for k, v in self.corpus.items()]
        lines += [json.dumps({"type": "old_passage", "id": k, "text": v}) for k, v in self.old_corpus.items()]
        lines += [json.dumps({"type": "lora_train", **asdict(x)}) for x in self.lora_train]
        lines += [json.dumps({"type": "test_question", **asdict(x)}) for x in self.test_questions]
        lines += [json.dumps({"type": "raft_train", **asdict(x)}) for x in self.raft_train]
        path.write_text("\n".join(lines) + "\n", encoding="utf-8")
        return path

    @classmethod
    def from_jsonl(cls, path: str | Path) -> World:
        """Read a world written by :meth:`to_jsonl`. Raises DatasetError naming the line of a bad record."""
        path = Path(path)
        header: dict[str, Any] | None = None
        people: list[Person] = []
        corpus: dict[str, str] = {}
        old_corpus: dict[str, str] = {}
        lora: list[LoRAPair] = []
        questions: list[QAItem] = []
        raft: list[RaftItem] = []
        with path.open(encoding="utf-8") as fh:
            for number, line in enumerate(fh, 1):
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                    kind = record.pop("type")
                    if kind == "world":
                        if record.get("format") != FORMAT:
                            msg = f"format {record.get('format')!r}, expected {FORMAT!r}"
                            raise ValueError(msg)
                        header = record
                    elif kind == "person":
                        people.append(Person(**record))
                    elif kind == "passage":
                        corpus[record["id"]] = record["text"]
                    elif kind == "old_passage":
                        old_corpus[record["id"]] = record["text"]
                    elif kind == "lora_train":
                        lora.append(LoRAPair(**record))
                    elif kind == "test_question":
                        questions.append(QAItem(**record))
                    elif kind == "raft_train":
                        record["passages"] = tuple(record["passages"])
                        record["distractor_ids"] = tuple(record["distractor_ids"])
                        raft.append(RaftItem(**record))
                    else:
                        msg = f"unknown record type {kind!r}"
                        raise ValueError(msg)
                except (ValueError, KeyError, TypeError, AttributeError) as err:
                    msg = f"{path}:{number}: not a synthetic-world record ({err})"
                    raise DatasetError(msg) from err
        if header is None:
            msg = f"{path}: no 'world' header record"
            raise DatasetError(msg)
        return cls(
            header["seed"], header["settings"], tuple(people), corpus, old_corpus, tuple(lora), tuple(questions),
            tuple(raft),
        )  # fmt: skip


def format_context(passages: Iterable[str]) -> str:
    """Passages as one context string for a reader: a blank line between passages."""
    return "\n\n".join(passages)


def _article(word: str) -> str:
    return "an" if word[0].lower() in "aeiou" else "a"


def render_passage(person: Person, rng: random.Random, facts: Mapping[str, str] | None = None) -> str:
    """One passage stating ``facts`` (default ``person.facts``) about ``person``.

    Sentence order and templates are drawn from ``rng``: the first sentence names the person, later ones
    use the full name or a pronoun. Two calls with equal ``rng`` states and different ``facts`` produce the
    same layout, so a passage before and after an update differ only in the updated values.
    """
    facts = dict(person.facts if facts is None else facts)
    subject, lower, possessive = PRONOUNS[person.pronoun]
    names = list(facts)
    rng.shuffle(names)
    sentences = []
    for i, attribute in enumerate(names):
        template = rng.choice(ATTRIBUTES[attribute].statements)
        use_name = i == 0 or rng.random() < 0.4
        value = facts[attribute]
        text = template.format(
            S=person.name if use_name else subject,
            s=person.name if use_name and "{S}" not in template else lower,  # "X comes from Y, where he was born"
            P=f"{person.name}'s" if use_name else possessive,
            N=person.name,
            a=_article(value),
            v=value,
        )
        sentences.append(text[0].upper() + text[1:])
    return " ".join(sentences)


def question_for(attribute: str, name: str, template: int = 0) -> str:
    """The question asking ``attribute`` of the person called ``name``, with question template ``template``."""
    questions = ATTRIBUTES[attribute].questions
    return questions[template % len(questions)].format(N=name)


def vocabulary() -> list[str]:
    """Every word the world's passages and questions can contain (names, values, template words), sorted;
    the same for every seed. (A passage capitalises only a sentence's first character, and every template
    begins with a slot filled by a capitalised word or with a capitalised word of its own.)"""
    words: set[str] = set(MALE) | set(FEMALE) | set(SURNAMES) | {"s"}  # the s of "<name>'s"
    for pronouns in PRONOUNS.values():
        words.update(pronouns)
    for attribute in ATTRIBUTES.values():
        words.update(attribute.values)
        for template in (*attribute.statements, *attribute.questions):
            text = template.replace("{a}", "a an")
            for slot in ("{S}", "{s}", "{P}", "{N}", "{v}"):
                text = text.replace(slot, " ")
            words.update(_words(text))
    return sorted(words)


def _words(text: str) -> list[str]:
    out, current = [], ""
    for ch in text:
        if ch.isalnum():
            current += ch
        else:
            if current:
                out.append(current)
            current = ""
    if current:
        out.append(current)
    return out


def _distractors(people: Sequence[Person], gold: Person, k: int, rng: random.Random, split: str) -> list[str]:
    pool = [p for p in people if p.split == split and p.passage_id != gold.passage_id]
    if k > len(pool):
        msg = f"cannot draw {k} distractors from {len(pool)} other {split} people"
        raise InvalidInputError(msg)
    similar = [p for p in pool if p.first == gold.first or p.last == gold.last]
    chosen: list[Person] = rng.sample(similar, min(len(similar), k // 2 + rng.randint(0, k % 2)))
    rest = [p for p in pool if p not in chosen]
    chosen += rng.sample(rest, k - len(chosen))
    rng.shuffle(chosen)
    return [p.passage_id for p in chosen]


def _check_fraction(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value <= 1:
        msg = f"{name} must be a number in [0, 1], got {value!r}"
        raise InvalidInputError(msg)


def make_world(
    seed: int = 0,
    n_people: int = 1200,
    n_test: int = 200,
    *,
    trained_fraction: float = 0.4,
    updated_fraction: float = 0.2,
    raft_distractors: int = 2,
    raft_p_gold: float = 1.0,
) -> World:
    """Draw a synthetic world from ``seed``.

    Args:
        seed: the one seed everything is drawn from.
        n_people: people in all (at most ``len(MALE + FEMALE) * len(SURNAMES)`` = 3,600 names).
        n_test: how many of them are test people; the rest are reader people.
        trained_fraction, updated_fraction: the share of each attribute's test facts that are "trained" and
            "updated" (stratified per attribute); the rest are "unseen".
        raft_distractors: distractor passages (other test people's, before the update) per RAFT example.
        raft_p_gold: probability that a RAFT example's context holds its gold passage (RAFT's P); without
            it the example has ``raft_distractors + 1`` distractors.
    """
    if isinstance(seed, bool) or not isinstance(seed, int):
        msg = f"seed must be an integer, got {seed!r}"
        raise InvalidInputError(msg)
    capacity = (len(MALE) + len(FEMALE)) * len(SURNAMES)
    for name, value, low in (
        ("n_people", n_people, 2),
        ("n_test", n_test, 1),
        ("raft_distractors", raft_distractors, 0),
    ):
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            msg = f"{name} must be an integer >= {low}, got {value!r}"
            raise InvalidInputError(msg)
    if n_people > capacity:
        msg = f"n_people must be at most {capacity} (the number of distinct names), got {n_people}"
        raise InvalidInputError(msg)
    if n_test >= n_people:
        msg = f"n_test must be smaller than n_people ({n_people}), got {n_test}"
        raise InvalidInputError(msg)
    if raft_distractors + 1 >= n_test:
        msg = f"raft_distractors must be below n_test - 1 ({n_test - 1}), got {raft_distractors}"
        raise InvalidInputError(msg)
    for name, fraction in (
        ("trained_fraction", trained_fraction),
        ("updated_fraction", updated_fraction),
        ("raft_p_gold", raft_p_gold),
    ):
        _check_fraction(name, fraction)
    if trained_fraction + updated_fraction > 1:
        msg = f"trained_fraction + updated_fraction must be at most 1, got {trained_fraction + updated_fraction}"
        raise InvalidInputError(msg)
    settings: dict[str, Any] = {
        "n_people": n_people,
        "n_test": n_test,
        "trained_fraction": trained_fraction,
        "updated_fraction": updated_fraction,
        "raft_distractors": raft_distractors,
        "raft_p_gold": raft_p_gold,
    }
    rng = random.Random(seed)

    # People: distinct (first, last) pairs; passage ids in draw order, the split drawn separately.
    firsts: list[tuple[str, Literal["he", "she"]]] = [(n, "he") for n in MALE] + [(n, "she") for n in FEMALE]
    pairs = rng.sample([(f, g, last) for f, g in firsts for last in SURNAMES], n_people)
    test_index = set(rng.sample(range(n_people), n_test))
    width = max(4, len(str(n_people)))
    people: list[Person] = []
    for i, (first, pronoun, last) in enumerate(pairs):
        facts = {a.name: rng.choice(a.values) for a in ATTRIBUTES.values()}
        split: Literal["reader", "test"] = "test" if i in test_index else "reader"
        people.append(Person(f"p{i + 1:0{width}d}", first, last, pronoun, split, facts))

    # Kinds, stratified per attribute; an updated fact gets a new value, different from the old one.
    # (Person is frozen, its dicts are not: they are filled here, before the world is handed out.)
    tests = [p for p in people if p.split == "test"]
    for attr in ATTRIBUTES.values():
        order = rng.sample(range(n_test), n_test)
        n_trained = round(trained_fraction * n_test)
        n_updated = round(updated_fraction * n_test)
        for rank, j in enumerate(order):
            person = tests[j]
            kind = "trained" if rank < n_trained else "updated" if rank < n_trained + n_updated else "unseen"
            person.kinds[attr.name] = kind
            if kind == "updated":
                old = person.facts[attr.name]
                person.previous[attr.name] = old
                person.facts[attr.name] = rng.choice([v for v in attr.values if v != old])

    # Passages: one layout per person (its own rng), rendered with the current and the old facts.
    corpus: dict[str, str] = {}
    old_corpus: dict[str, str] = {}
    for person in people:
        layout_seed = rng.getrandbits(64)
        corpus[person.passage_id] = render_passage(person, random.Random(layout_seed))
        if person.split == "test":
            old_corpus[person.passage_id] = render_passage(person, random.Random(layout_seed), person.old_facts)

    # Questions: one canonical template per fact (training and test alike), another as the paraphrase.
    lora: list[LoRAPair] = []
    questions: list[QAItem] = []
    raft: list[RaftItem] = []
    n_templates = {name: len(a.questions) for name, a in ATTRIBUTES.items()}
    qwidth = max(4, len(str(n_test * len(ATTRIBUTES))))
    for person in people:
        if person.split != "test":
            continue
        for attribute in ATTRIBUTES:
            template = rng.randrange(n_templates[attribute])
            question = question_for(attribute, person.name, template)
            kind = person.kinds[attribute]
            old = person.old_facts[attribute]
            questions.append(
                QAItem(
                    id=f"q{len(questions) + 1:0{qwidth}d}",
                    question=question,
                    answer=person.facts[attribute],
                    kind=kind,
                    passage_id=person.passage_id,
                    attribute=attribute,
                    person=person.name,
                    old_answer=old if kind == "updated" else None,
                    paraphrase=question_for(attribute, person.name, template + 1),
                )
            )
            if kind == "unseen":
                continue
            lora.append(LoRAPair(question, old, person.passage_id, attribute, kind))
            gold = rng.random() < raft_p_gold
            ids = _distractors(people, person, raft_distractors + (0 if gold else 1), rng, "test")
            texts = [old_corpus[i] for i in ids]
            gold_index = None
            if gold:
                gold_index = rng.randint(0, len(texts))
                texts.insert(gold_index, old_corpus[person.passage_id])
            raft.append(
                RaftItem(question, old, person.passage_id, attribute, kind, tuple(texts), tuple(ids), gold_index)
            )
    return World(seed, settings, tuple(people), corpus, old_corpus, tuple(lora), tuple(questions), tuple(raft))
