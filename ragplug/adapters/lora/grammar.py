"""Grammar-constrained decoding with xgrammar: outputs that always parse and validate.

xgrammar (chosen over llguidance for its small footprint, its JSON-schema compiler and its batched
bitmask kernels on CPU and CUDA) compiles a JSON schema against the tokenizer's vocabulary; during
decoding a :class:`~xgrammar.GrammarMatcher` per row says which tokens may come next, and the
logits of all others are masked.

A mask alone does not guarantee a *finished* document: a random model may write a string forever and
hit ``max_new_tokens`` half-way. So each constrained row simulates, on a fork of its matcher, the
shortest way to finish from where it is (:meth:`GrammarRow.min_remaining`). Near the end of its
budget (the engine's "zone") a row may only take, among the model's most likely allowed tokens, those
after which the rest of the budget still covers the shortest finish; once the budget only just covers
it, the row enters a *closing mode* that follows that shortest finish: inside a string the closing
quote, outside the stop token, ``}``, ``]``, ``,``, ``"``, else the longest allowed token. Schemas are
compiled without free whitespace for the same reason. The engine raises the token budget of a
constrained request to at least the shortest valid document, so every constrained answer completes,
but never past the context window: :meth:`GrammarBackend.shortest` measures that document once per
schema, and a schema with none that fits the window (one whose required property refers back to its
own object, or a constant longer than the window) is refused with :class:`SchemaError`.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Sequence
from typing import Any

from ragplug._extras import require
from ragplug.errors import SchemaError

__all__ = ["GrammarBackend", "GrammarRow"]

_CLOSERS = ("}", "]", ",", '"')


class GrammarBackend:
    """Compiles JSON schemas for one tokenizer (cached) and finds the closing-mode tokens."""

    def __init__(self, tokenizer: Any, vocab_size: int, stop_token_ids: Sequence[int], max_steps: int) -> None:
        xgr = require("xgrammar", "lora")
        self._xgr = xgr
        self.vocab_size = vocab_size
        self.max_steps = max_steps  # the longest answer there can be: the model's context window
        self.stop_token_ids = list(stop_token_ids)
        info = xgr.TokenizerInfo.from_huggingface(tokenizer, vocab_size=vocab_size, stop_token_ids=self.stop_token_ids)
        self._compiler = xgr.GrammarCompiler(info)
        self._cache: dict[str, Any] = {}
        self._shortest: dict[str, int | None] = {}
        self._lock = threading.Lock()
        import numpy as np

        vocab = tokenizer.get_vocab()
        self.token_text = {i: tokenizer.decode([i]) for i in vocab.values() if i < vocab_size}
        # Closing-mode preference among allowed tokens: longest first, tokens with whitespace last (a
        # string pattern such as "must contain a non-space" is then satisfied instead of padded forever).
        self.token_rank = np.zeros(vocab_size, dtype=np.int32)
        for i, text in self.token_text.items():
            self.token_rank[i] = len(text) + (0 if text.strip() == text and " " not in text else -1000)
        found = {text: i for i, text in sorted(self.token_text.items(), reverse=True) if text in _CLOSERS}
        self.quote_id = found.get('"')
        self.closer_ids = [found.get(c) for c in _CLOSERS if c != '"']

    def compile(self, schema: dict[str, Any]) -> Any:
        """Compile ``schema`` (cached); a schema xgrammar rejects raises :class:`SchemaError`."""
        return self._compile(_key(schema))

    def _compile(self, key: str) -> Any:
        with self._lock:
            if key not in self._cache:
                try:
                    strict = json.dumps(json_strings(json.loads(key)))
                    self._cache[key] = self._compiler.compile_json_schema(strict, any_whitespace=False)
                except Exception as err:  # xgrammar raises RuntimeError / InvalidJSONError subclasses
                    msg = f"the grammar compiler rejected the schema {_excerpt(key)}: {err}"
                    raise SchemaError(msg) from err
            return self._cache[key]

    def shortest(self, schema: dict[str, Any]) -> int:
        """Tokens (end-of-sequence included) of the shortest answer the closing policy writes for ``schema``,
        measured once per schema. A schema with no valid document within :attr:`max_steps` tokens raises
        :class:`SchemaError`: no answer to it can finish inside the context window."""
        key = _key(schema)
        compiled = self._compile(key)
        if key not in self._shortest:  # two threads may measure the same schema once each: harmless
            row = GrammarRow(self, self._xgr.GrammarMatcher(compiled))
            self._shortest[key] = row.finish_length(limit=self.max_steps)
        steps = self._shortest[key]
        if steps is None:
            msg = (
                f"no JSON document valid against the schema {_excerpt(key)} fits in {self.max_steps} tokens, the "
                "model's context window: the schema has no finite valid document (a required property that refers "
                "back to its own object?) or its shortest one is longer than the window"
            )
            raise SchemaError(msg)
        return steps

    def row(self, schema: dict[str, Any]) -> GrammarRow:
        return GrammarRow(self, self._xgr.GrammarMatcher(self.compile(schema)))

    def allocate(self, batch: int) -> Any:
        return self._xgr.allocate_token_bitmask(batch, self.vocab_size)


# JSON forbids raw control characters (U+0000 to U+001F) in strings; xgrammar 0.2 compiles a string with a
# minLength / maxLength to the class [^"\\\r\n], which admits them: a model may then write an answer no JSON
# parser reads (seen: a random model's 0x1e inside a judge's reason). The same bounds as a pattern exclude them.
_STRING_CHARACTER = r'[^"\\\x00-\x1f]'
_LITERAL_KEYS = ("enum", "const", "default", "examples")  # JSON values, not schemas: never rewritten


def json_strings(schema: Any) -> Any:
    """``schema`` with every length-bounded string (``minLength`` / ``maxLength``, no ``pattern``, ``format``,
    ``enum`` or ``const`` of its own) rewritten as the equivalent ``pattern`` that admits no control
    character, quote or backslash, so that every answer decoded under it is valid JSON. Other nodes are
    copied as they are.

    >>> bounded = json_strings({"type": "string", "minLength": 1, "maxLength": 3})
    >>> sorted(bounded), bounded["pattern"].endswith("{1,3}")
    (['pattern', 'type'], True)
    """
    if isinstance(schema, list):
        return [json_strings(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    out = {key: value if key in _LITERAL_KEYS else json_strings(value) for key, value in schema.items()}
    bounded = "minLength" in out or "maxLength" in out
    if out.get("type") == "string" and bounded and not {"pattern", "format", "enum", "const"} & set(out):
        low, high = out.pop("minLength", 0), out.pop("maxLength", "")
        out["pattern"] = f"{_STRING_CHARACTER}{{{low},{high}}}"
    return out


def _key(schema: dict[str, Any]) -> str:
    """The cache key of a schema: its JSON text (property order matters: the model writes them in it)."""
    if not isinstance(schema, dict):
        msg = f"a JSON schema must be a dict, got {type(schema).__name__}: {schema!r:.200}"
        raise SchemaError(msg)
    try:
        return json.dumps(schema)
    except (TypeError, ValueError) as err:
        msg = f"the schema is not JSON-serialisable: {err}"
        raise SchemaError(msg) from err


def _excerpt(key: str, width: int = 200) -> str:
    return key if len(key) <= width else f"{key[: width - 3]}..."


class _Lexer:
    """Tracks whether the JSON text so far ends inside a string (and after a backslash)."""

    def __init__(self, in_string: bool = False, escaped: bool = False) -> None:
        self.in_string, self.escaped = in_string, escaped

    def feed(self, text: str) -> None:
        for char in text:
            if self.escaped:
                self.escaped = False
            elif self.in_string and char == "\\":
                self.escaped = True
            elif char == '"':
                self.in_string = not self.in_string

    def copy(self) -> _Lexer:
        return _Lexer(self.in_string, self.escaped)


class GrammarRow:
    """The grammar state of one row of a batch."""

    def __init__(self, backend: GrammarBackend, matcher: Any) -> None:
        self.backend = backend
        self.matcher = matcher
        self.lexer = _Lexer()
        self.accepted = 0
        self._words: Any = None  # the last packed mask row, and its unpacked "forbidden" form
        self._blocked: Any = None

    def accept(self, token_id: int) -> None:
        if self.matcher.is_terminated():
            return
        if not self.matcher.accept_token(int(token_id)):  # cannot happen when the mask was applied
            msg = f"token {token_id} violates the grammar"
            raise SchemaError(msg)
        self.lexer.feed(self.backend.token_text.get(int(token_id), ""))
        self.accepted += 1

    @property
    def terminated(self) -> bool:
        return bool(self.matcher.is_terminated())

    def fill(self, bitmask: Any, index: int) -> None:
        self.matcher.fill_next_token_bitmask(bitmask, index)

    def mask(self, scores: Any, bitmask: Any, index: int) -> None:
        """Set, in place, the scores (one row) of the tokens the grammar forbids now to -inf.

        The unpacked mask is kept while the allowed set stays the same (inside a string it changes
        rarely), so most steps cost one comparison of packed words and one ``masked_fill_``.
        """
        import numpy as np
        import torch

        words = bitmask[index].numpy()
        if self._words is None or not np.array_equal(words, self._words):
            self._words = words.copy()
            allowed = _Packed(words, self.backend.vocab_size).unpack()
            blocked = np.ones(scores.shape[-1], dtype=bool)  # rows past the grammar's vocabulary: forbidden
            n = min(len(blocked), len(allowed))
            blocked[:n] = ~allowed[:n]
            self._blocked = torch.from_numpy(blocked).to(scores.device)
        scores.masked_fill_(self._blocked, float("-inf"))

    def min_remaining(self, after: int | None = None, limit: int | None = None) -> int:
        """Tokens the closing policy needs to finish the document from the current state (simulated on a
        fork of the matcher), or from the state after accepting ``after`` (which must be allowed); ``limit``
        (default: the backend's ``max_steps``) when it does not finish within that many."""
        limit = self.backend.max_steps if limit is None else limit
        steps = self.finish_length(after, limit)
        return limit if steps is None else steps

    def finish_length(self, after: int | None = None, limit: int = 2048) -> int | None:
        """:meth:`min_remaining`, or None when the closing policy does not finish within ``limit`` tokens."""
        fork = self.matcher.fork()
        lexer = self.lexer.copy()
        if after is not None:
            if after in self.backend.stop_token_ids:
                return 0
            fork.accept_token(int(after))
            lexer.feed(self.backend.token_text.get(int(after), ""))
        bitmask = self.backend.allocate(1)
        steps = 0
        while not fork.is_terminated():
            if steps >= limit:
                return None
            fork.fill_next_token_bitmask(bitmask, 0)
            choice = self.closing_choice(_Packed(bitmask.numpy()[0], self.backend.vocab_size), lexer)
            if choice is None:
                break
            steps += 1
            if choice in self.backend.stop_token_ids:
                break
            fork.accept_token(choice)
            lexer.feed(self.backend.token_text.get(choice, ""))
        return steps

    def closing_choice_in(self, bitmask: Any, index: int) -> int | None:
        """:meth:`closing_choice` read from row ``index`` of a filled xgrammar bitmask (no unpacking)."""
        return self.closing_choice(_Packed(bitmask[index].numpy(), self.backend.vocab_size))

    def closing_choice(self, allowed: Any, lexer: _Lexer | None = None) -> int | None:
        """The closing-mode token: inside a string the closing quote; outside, the stop token, then ``}``,
        ``]``, ``,`` and last ``"`` (to open a required key); when none is allowed, the longest allowed token
        without whitespace (a forced key or literal is then written in the fewest steps). ``allowed`` is a
        boolean array over the vocabulary or a packed xgrammar bitmask row; None when nothing is allowed."""
        import numpy as np

        lexer = lexer or self.lexer
        if lexer.in_string:
            order = [self.backend.quote_id] if not lexer.escaped else []
        else:
            order = [*self.backend.stop_token_ids, *self.backend.closer_ids, self.backend.quote_id]
        for token_id in order:
            if token_id is not None and token_id < len(allowed) and bool(allowed[token_id]):
                return int(token_id)
        mask = allowed.unpack() if isinstance(allowed, _Packed) else np.asarray(allowed, dtype=bool)
        ids = np.flatnonzero(mask[: self.backend.vocab_size])
        if not len(ids):
            return None
        return int(ids[np.argmax(self.backend.token_rank[ids])])


class _Packed:
    """A packed bitmask row (int32 words, bit i of word i // 32) read without unpacking it."""

    def __init__(self, words: Any, size: int) -> None:
        self.words, self.size = words, size

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, token_id: int) -> bool:
        return bool((int(self.words[token_id >> 5]) >> (token_id & 31)) & 1)

    def unpack(self) -> Any:
        import numpy as np

        return np.unpackbits(self.words.view(np.uint8), bitorder="little")[: self.size].astype(bool)
