"""Batched decoding: one ``generate`` call for rows that may each have their own adapter, stop strings,
token budget, grammar (tool calls and structured output, see :mod:`.grammar`), streaming sink and
cancellation flag, enforced from a stopping criterion and a logits processor that see every decoding step.

No row ever generates past the context window: a batch whose longest prompt plus largest budget would not
fit is split (:meth:`Decoder.within_context`). A streaming callback that raises (a consumer gone away) ends
only its own row; the other rows of the batch are served as if it were not there.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from ragplug._extras import require
from ragplug.adapters.lora.grammar import GrammarBackend, GrammarRow
from ragplug.adapters.lora.requests import GenerationRequest, GenerationResult, Plan

__all__ = ["Decoder", "Row"]


class Row:
    """Per-row decoding state inside one batched ``generate`` call."""

    def __init__(self, request: GenerationRequest, grammar: GrammarRow | None, plan: Plan | None = None) -> None:
        self.request = request
        self.grammar = grammar
        self.tokens: list[int] = []
        self.visible: list[int] = []  # tokens that are text (no end-of-sequence or padding)
        self.prefix_offset = 0  # incremental detokenization window (see Decoder.extend_text)
        self.read_offset = 0
        self.text = ""
        self.cut = False  # the text was cut at a stop string
        self.emitted = 0
        self.done = False
        self.error: BaseException | None = None  # this row failed (its streaming callback raised)
        self.closing = False
        self.finish_reason = "length"
        # A constrained answer's budget covers at least its shortest valid document (see prompts.Planner.plan).
        self.budget = plan.budget if plan is not None else request.config.max_new_tokens
        self.estimate = plan.shortest if plan is not None else 0  # tokens the shortest valid finish needs
        # (refreshed as decoding goes)
        self.fresh = False  # whether ``estimate`` is exact for the current state
        self.known: dict[int, int] = {}  # candidate token -> shortest finish after it, this step

    def fail(self, error: BaseException) -> None:
        """End this row with ``error`` (delivered to its caller); the batch's other rows go on."""
        self.error = error
        self.done, self.finish_reason = True, "error"


class Decoder:
    """Runs ``generate`` calls for planned rows and turns each row's tokens into text, stops and streams."""

    def __init__(
        self,
        *,
        tokenizer: Any,
        device: Any,
        eos_token_ids: list[int],
        pad_token_id: int,
        context_window: int,
        grammar: Callable[[], GrammarBackend],
    ) -> None:
        self.tokenizer = tokenizer
        self.device = device
        self.eos_token_ids = eos_token_ids
        self.pad_token_id = pad_token_id
        self.context_window = context_window
        self.grammar = grammar
        self._hidden_ids = {*eos_token_ids, pad_token_id}

    def within_context(self, admitted: list[tuple[int, Plan]]) -> list[list[tuple[int, Plan]]]:
        """Split a batch so that no row runs past the context window. A row that has finished is still fed
        padding while the others generate, so every row of a ``generate`` call reaches position
        ``len(its prompt) + the call's largest budget``. One call when that fits (the usual case); otherwise
        rows in order of prompt length, a new call whenever the next row would not fit."""
        if not admitted:
            return []
        window = self.context_window
        if max(len(plan.prompt) for _, plan in admitted) + max(plan.budget for _, plan in admitted) <= window:
            return [admitted]
        parts: list[list[tuple[int, Plan]]] = [[]]
        budget = 0
        for item in sorted(admitted, key=lambda item: len(item[1].prompt)):
            budget = max(budget, item[1].budget)
            if parts[-1] and len(item[1].prompt) + budget > window:  # each row alone fits (see _fit)
                parts.append([])
                budget = item[1].budget
            parts[-1].append(item)
        return parts

    def generate(
        self,
        model: Any,
        requests: Sequence[GenerationRequest],
        plans: list[Plan],
        routing: Any,
        extra: dict[str, Any],
    ) -> list[GenerationResult | BaseException]:
        """One ``generate`` call for ``requests`` and their ``plans`` (the lock is held). A row whose callback
        fails gets its error as its outcome; an error of the call itself fails every row (it is raised)."""
        torch = require("torch", "lora")
        from transformers import LogitsProcessor, LogitsProcessorList, StoppingCriteria, StoppingCriteriaList

        rows = [
            Row(r, self.grammar().row(r.schema) if r.schema is not None else None, plan)
            for r, plan in zip(requests, plans, strict=True)
        ]
        prompts = [plan.prompt for plan in plans]
        width = max(len(p) for p in prompts)
        input_ids = torch.full((len(prompts), width), self.pad_token_id, dtype=torch.long)
        attention = torch.zeros((len(prompts), width), dtype=torch.long)
        for i, prompt in enumerate(prompts):
            input_ids[i, width - len(prompt) :] = torch.tensor(prompt, dtype=torch.long)
            attention[i, width - len(prompt) :] = 1
        do_sample, temperature, top_p = requests[0].config.sampling_key
        engine = self

        class Monitor(StoppingCriteria):
            def __call__(self, ids: Any, scores: Any, **kwargs: Any) -> Any:
                last = ids[:, -1].tolist()
                for row, token in zip(rows, last, strict=True):
                    if not row.done:
                        try:
                            engine.advance(row, int(token))
                        except Exception as err:  # its streaming callback or grammar: this row only
                            row.fail(err)
                return torch.tensor([row.done for row in rows], device=ids.device)

        class Constrain(LogitsProcessor):
            def __init__(self) -> None:
                self.step = 0
                self.bitmask = engine.grammar().allocate(len(rows))

            def __call__(self, ids: Any, scores: Any) -> Any:
                self.step += 1
                active = [i for i, row in enumerate(rows) if row.grammar is not None and not row.done]
                if not active:
                    return scores
                # Sequential on purpose: torch ops from extra threads give each thread its own OpenMP team, and
                # on a CPU the teams' spin-waiting then slows every later decoding step (measured: -25%).
                for i in active:
                    self.mask(i, scores)
                best = scores.argmax(dim=-1).tolist() if not do_sample else None  # one batched pass
                for i in active:
                    self.restrict(i, scores, best)
                return scores

            def mask(self, i: int, scores: Any) -> None:
                grammar = rows[i].grammar
                assert grammar is not None
                grammar.fill(self.bitmask, i)
                grammar.mask(scores[i], self.bitmask, i)

            def restrict(self, i: int, scores: Any, best: list[int] | None) -> None:
                """Near the end of a row's budget, keep only tokens after which its shortest finish fits."""
                row = rows[i]
                grammar = row.grammar
                assert grammar is not None
                left = row.budget - len(row.tokens)
                zone = left <= 2 * row.estimate + 32
                if not row.closing and not row.fresh and (zone or len(row.tokens) % 16 == 0):
                    row.estimate = grammar.min_remaining()
                row.fresh = False
                closing = grammar.closing_choice_in(self.bitmask, i)
                if closing is None or not bool(torch.isfinite(scores[i, closing])):  # another processor cut it
                    closing = grammar.closing_choice(torch.isfinite(scores[i]).cpu().numpy())
                if closing is None:
                    return
                if row.closing or left <= row.estimate + 1:
                    row.closing = True
                    keep = [closing]
                elif zone:
                    keep = self.feasible(row, scores[i], left, None if best is None else best[i])
                    keep.append(closing)
                else:
                    return
                kept = scores[i, keep].clone()
                scores[i] = float("-inf")
                scores[i, keep] = kept

            @staticmethod
            def feasible(row: Row, scores: Any, left: int, best: int | None) -> list[int]:
                """The best tokens (greedy: the best one) whose shortest finish still fits ``left - 1``;
                the finish length after each is remembered, so the next step need not simulate it again."""
                grammar = row.grammar
                assert grammar is not None
                row.known = {}
                # greedy: the argmax is almost always feasible; try it before ranking the top 8
                if best is not None and bool(torch.isfinite(scores[best])):
                    row.known[best] = grammar.min_remaining(after=best)
                    if row.known[best] <= left - 1:
                        return [best]
                values, indices = torch.topk(scores, k=8)
                keep = []
                for value, token in zip(values.tolist(), indices.tolist(), strict=True):
                    if value == float("-inf"):
                        break
                    if token not in row.known:
                        row.known[token] = grammar.min_remaining(after=token)
                    if row.known[token] <= left - 1:
                        keep.append(token)
                        if not do_sample:  # greedy takes the best feasible token: stop looking
                            break
                return keep

        processors = LogitsProcessorList([Constrain()]) if any(r.grammar for r in rows) else None
        kwargs: dict[str, Any] = {
            "input_ids": input_ids.to(self.device),
            "attention_mask": attention.to(self.device),
            "max_new_tokens": max(row.budget for row in rows),
            "do_sample": do_sample,
            "pad_token_id": self.pad_token_id,
            "eos_token_id": self.eos_token_ids,
            "stopping_criteria": StoppingCriteriaList([Monitor()]),
            "logits_processor": processors,
        }
        if do_sample:
            kwargs.update(temperature=temperature, top_p=top_p)
        else:
            kwargs.update(temperature=None, top_p=None, top_k=None)
        kwargs.update(extra)
        with torch.inference_mode(), routing:
            model.generate(**kwargs)
        results: list[GenerationResult | BaseException] = []
        for row, prompt in zip(rows, prompts, strict=True):
            if row.error is None:
                if not row.cut:
                    self.extend_text(row, final=True)  # an incomplete character left at the very end
                try:
                    self.flush(row, final=True)
                except Exception as err:
                    row.fail(err)
            if row.error is not None:
                results.append(row.error)
                continue
            results.append(
                GenerationResult(
                    text=row.text,
                    token_ids=list(row.tokens),
                    prompt_tokens=len(prompt),
                    completion_tokens=len(row.tokens),
                    finish_reason=row.finish_reason,
                    adapter=row.request.adapter,
                )
            )
        return results

    def advance(self, row: Row, token: int) -> None:
        """Take one generated token for a row: grammar, stop strings, budget, cancellation, streaming."""
        request = row.request
        if row.grammar is not None:
            row.grammar.accept(token)
            row.fresh = token in row.known  # the shortest finish from here was simulated last step
            if row.fresh:
                row.estimate = row.known[token]
            row.known = {}
        if token in self.eos_token_ids:
            row.done, row.finish_reason = True, "stop"
            return
        row.tokens.append(token)
        if token not in self._hidden_ids:
            row.visible.append(token)
        before = len(row.text)
        self.extend_text(row)
        for stop in request.config.stop:
            cut = row.text.find(stop, max(0, before - len(stop) + 1))
            if cut >= 0:
                row.text = row.text[:cut]
                row.done, row.finish_reason, row.cut = True, "stop", True
        if request.cancel.is_set():
            row.done, row.finish_reason = True, "cancelled"
            return  # nobody reads a cancelled row's stream any more (its consumer may be gone)
        if not row.done and len(row.tokens) >= row.budget:
            row.done, row.finish_reason = True, "length"
        self.flush(row, final=row.done)

    def extend_text(self, row: Row, final: bool = False) -> None:
        """Append the text of a row's new tokens, decoding only a short window (not the whole answer).

        The window starts at the previous step's tokens, so tokenizers that drop or merge spaces at the
        start of a decode (SentencePiece) still produce the same text as one decode of everything. Text
        ending in an incomplete multi-byte character waits for the next token, except at the end.
        """
        decode = self.tokenizer.decode
        prefix = decode(row.visible[row.prefix_offset : row.read_offset], skip_special_tokens=False)
        full = decode(row.visible[row.prefix_offset :], skip_special_tokens=False)
        if len(full) > len(prefix) and (final or not full.endswith("\ufffd")):
            row.text += full[len(prefix) :]
            row.prefix_offset, row.read_offset = row.read_offset, len(row.visible)

    @staticmethod
    def flush(row: Row, final: bool) -> None:
        sink = row.request.on_text
        if sink is None or row.finish_reason == "cancelled":
            return
        safe = len(row.text)
        if not final:
            if row.text.endswith("\ufffd"):  # an incomplete multi-byte character
                safe = len(row.text.rstrip("\ufffd"))
            for stop in row.request.config.stop:  # hold back what may be the start of a stop string
                for n in range(min(len(stop) - 1, safe), 0, -1):
                    if row.text[:safe].endswith(stop[:n]):
                        safe -= n
                        break
        if safe > row.emitted:
            sink(row.text[row.emitted : safe])
            row.emitted = safe
