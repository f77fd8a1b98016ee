"""ColBERT text encoders on transformers 5: Stanford and PyLate checkpoints, and plain HF encoders.

:class:`ColBERTEncoder` satisfies the engine's :class:`~ragplug.retrievers.late_interaction.Encoder`
protocol. It loads the checkpoint through ``transformers.AutoModel.from_pretrained`` (so a hub id and a
local folder take the same path), checks that every encoder weight was found in the checkpoint, and
applies the ColBERT protocol the checkpoint was trained with (:mod:`.checkpoint`):

* queries: ``[CLS] <query marker> tokens [SEP]``, padded to ``query_maxlen`` with ``[MASK]`` when the
  checkpoint uses query augmentation (expansion tokens attended to or not, as configured); every
  position is kept;
* documents: ``[CLS] <document marker> tokens [SEP]`` truncated to ``doc_maxlen``; padding and
  skiplist (punctuation) tokens are dropped;
* then the projection (``linear`` / Dense modules) and L2 normalisation.

Plain encoders (all-MiniLM-L6-v2, say) keep every real token, with no markers and no projection.
Texts are grouped into batches of similar length (sorted by length, so little padding), and the batches
run longest first, then in a seeded shuffle: the running time of any long enough stretch of the work is
representative of the whole, so the progress bar's rate and time left are honest after a few batches (sorted
order would start with the slowest batches), while a batch too large for the device still fails at once.
The outputs come back in input order. :meth:`~ColBERTEncoder.encode_documents` shows a bar (documents,
documents/s, time left) for more than :data:`ragplug._progress.PROGRESS_THRESHOLD` documents.

Loading prints nothing: transformers' "Loading weights" bars are muted for the load (and restored), and
the chunker's whole-text tokenisation does not trigger transformers' "sequence length is longer than the
specified maximum" warning (it cuts the windows itself; the encoder truncates to ``doc_maxlen``).

A call of :meth:`~ColBERTEncoder.encode_queries` with a few queries runs with ``query_threads`` torch
threads (default 1, see :mod:`ragplug._threads`): its ops are too small to gain from a thread team, and a
team waits for every member, so it slows to the pace of a core another process holds. Documents, and
larger query batches, are encoded with torch's own setting.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ragplug._extras import require
from ragplug._progress import progress_bar, quiet_transformers, wants_progress
from ragplug._threads import torch_threads
from ragplug.errors import InvalidInputError
from ragplug.retrievers.colbert.checkpoint import (
    CheckpointFormat,
    ColBERTSettings,
    fingerprint_files,
    read_settings,
    resolve_checkpoint,
)
from ragplug.retrievers.late_interaction.base import Chunk, EncoderIdentity, FloatMatrix, check_text

__all__ = ["DEFAULT_MODEL", "SMALL_QUERY_BATCH", "ColBERTEncoder"]

logger = logging.getLogger(__name__)

#: The default checkpoint, a small and strong ColBERT (Stanford and PyLate formats both ship in it).
DEFAULT_MODEL = "answerdotai/answerai-colbert-small-v1"

#: An ``encode_queries`` call with at most this many queries (one search, or a few) runs with
#: ``query_threads`` torch threads; a larger one (an evaluation's query set) with torch's setting. On the
#: shared 2-core dev machine 1 thread encoded 8 queries 4x faster than torch's 2 (benchmarks/busy_latency.py).
SMALL_QUERY_BATCH = 8


class ColBERTEncoder:
    """Encode text into token-level multi-vectors with a ColBERT (or plain) transformers checkpoint.

    Args:
        model: hub id or local folder.
        device: ``"cpu"``, ``"cuda"``, ``"cuda:1"``...; default CUDA when available.
        dtype: torch dtype name for the encoder weights (``"float32"``, ``"bfloat16"``, ``"float16"``).
        batch_size: items per forward pass.
        query_maxlen / doc_maxlen: override the checkpoint's lengths.
        revision: hub revision.
        query_threads: torch threads for an ``encode_queries`` call of at most :data:`SMALL_QUERY_BATCH`
            queries (one search), set for the call and restored after it; ``None`` leaves torch's setting
            alone. A lower count is kept: this only lowers it. An attribute, so it can be changed later.
    """

    def __init__(
        self,
        model: str | Path = DEFAULT_MODEL,
        *,
        device: str | None = None,
        dtype: str = "float32",
        batch_size: int = 32,
        query_maxlen: int | None = None,
        doc_maxlen: int | None = None,
        revision: str | None = None,
        query_threads: int | None = 1,
    ) -> None:
        torch = require("torch", "colbert")
        transformers = require("transformers", "colbert")
        if not isinstance(batch_size, int) or batch_size <= 0:
            msg = f"batch_size must be a positive integer, got {batch_size!r}"
            raise InvalidInputError(msg)
        if query_threads is not None and (
            isinstance(query_threads, bool) or not isinstance(query_threads, int) or query_threads <= 0
        ):
            msg = f"query_threads must be a positive integer or None, got {query_threads!r}"
            raise InvalidInputError(msg)
        torch_dtype = getattr(torch, dtype, None)
        if not isinstance(torch_dtype, torch.dtype):
            msg = f"unknown dtype {dtype!r}; use float32, bfloat16 or float16"
            raise InvalidInputError(msg)
        self.name = str(model)
        self.batch_size = batch_size
        self.query_threads = query_threads
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        folder = resolve_checkpoint(model, revision)
        settings = read_settings(folder)
        overrides: dict[str, Any] = {}
        if query_maxlen is not None:
            overrides["query_maxlen"] = query_maxlen
        if doc_maxlen is not None:
            overrides["doc_maxlen"] = doc_maxlen
        if overrides:
            settings = ColBERTSettings(**{**settings.__dict__, **overrides})
        self.settings = settings

        with quiet_transformers(load_report=False):  # the load report is judged here, below
            self.tokenizer = transformers.AutoTokenizer.from_pretrained(str(settings.transformer_path))
            model_obj, info = transformers.AutoModel.from_pretrained(
                str(settings.transformer_path), dtype=torch_dtype, output_loading_info=True
            )
        missing = [k for k in info.get("missing_keys", []) if "pooler" not in k]
        missing += [str(k[0]) if isinstance(k, tuple) else str(k) for k in info.get("mismatched_keys", [])]
        if missing:
            msg = f"{folder}: encoder weights missing from the checkpoint (would be random): {sorted(missing)[:5]}"
            raise InvalidInputError(msg)
        unused = sorted(k for k in info.get("unexpected_keys", []) if not k.startswith("linear."))  # ColBERT head
        if unused:  # heads of other tasks (a BERT's MLM head, say): harmless for an encoder
            logger.info("%s: %d checkpoint weights not used by the encoder: %s", folder, len(unused), unused[:5])
        self.model = model_obj.to(self.device).eval()
        self._dense = [self._load_dense(layer.weights, torch_dtype) for layer in settings.dense]
        self._activations = [layer.activation for layer in settings.dense]
        self._dim = int(self._dense[-1][0].shape[0]) if self._dense else int(self.model.config.hidden_size)

        tok = self.tokenizer
        self._query_marker_id = self._token_id(settings.query_marker)
        self._doc_marker_id = self._token_id(settings.document_marker)
        self._mask_id = tok.mask_token_id
        if settings.query_expansion and self._mask_id is None:
            msg = f"{folder}: query expansion needs a [MASK] token, but the tokenizer has none"
            raise InvalidInputError(msg)
        skip_ids: set[int] = set()
        for word in settings.skiplist:
            skip_ids.update(tok.encode(word, add_special_tokens=False))
        self._skip_ids = np.array(sorted(skip_ids), dtype=np.int64)
        local = Path(model).expanduser()
        recorded = {  # how to rebuild this encoder (LateInteractionIndex.from_index), and what differs on mismatch
            "encoder": "colbert",
            "model": str(local.resolve()) if local.is_dir() else str(model),
            **({"revision": revision} if revision else {}),
            **settings.describe(),
        }
        self._identity = EncoderIdentity(self.name, self._dim, fingerprint_files(settings), recorded)
        logger.info("loaded %s (%s format, dim %d) on %s", self.name, settings.format.value, self._dim, self.device)

    def _token_id(self, token: str | None) -> int | None:
        if token is None:
            return None
        token_id = self.tokenizer.convert_tokens_to_ids(token)
        if token_id is None or token_id == self.tokenizer.unk_token_id:
            msg = f"marker token {token!r} is not in the tokenizer's vocabulary"
            raise InvalidInputError(msg)
        return int(token_id)

    def _load_dense(self, file: Path, dtype: Any) -> tuple[Any, Any]:
        from safetensors.torch import load_file

        tensors = load_file(str(file))
        if "linear.weight" not in tensors:
            msg = f"{file} has no 'linear.weight' tensor (found {sorted(tensors)[:5]})"
            raise InvalidInputError(msg)
        weight = tensors["linear.weight"].to(self.device, dtype)
        bias = tensors.get("linear.bias")
        return weight, (bias.to(self.device, dtype) if bias is not None else None)

    # -- Encoder protocol -----------------------------------------------------------------------------
    @property
    def identity(self) -> EncoderIdentity:
        return self._identity

    @property
    def dim(self) -> int:
        return self._dim

    def encode_queries(self, queries: Sequence[str]) -> list[FloatMatrix]:
        """One ``(n_tokens, dim)`` matrix per query (``query_maxlen`` rows when expansion is on)."""
        texts = self._texts(queries, "query")
        threads = self.query_threads if len(texts) <= SMALL_QUERY_BATCH else None
        return self._encode(texts, is_query=True, show_progress=False, threads=threads)

    def encode_documents(self, documents: Sequence[Any], *, show_progress: bool | None = None) -> list[FloatMatrix]:
        """One ``(n_tokens, dim)`` matrix per document, padding and skiplist tokens dropped, in input order.

        ``show_progress``: ``None`` (default) shows a bar (documents done, documents/s, time left) for more
        than :data:`~ragplug._progress.PROGRESS_THRESHOLD` documents; ``True`` / ``False`` force it."""
        texts = self._texts(documents, "document")
        return self._encode(texts, is_query=False, show_progress=wants_progress(show_progress, len(texts)))

    @staticmethod
    def _texts(items: Sequence[Any], what: str) -> list[str]:
        if isinstance(items, str):
            msg = f"pass a list of {what} strings, not one string"
            raise InvalidInputError(msg)
        out = list(items)
        for i, item in enumerate(out):
            if not isinstance(item, str) or not check_text(item, f"{what} {i}").strip():
                msg = f"{what} {i} must be a non-empty string, got {item!r}"
                raise InvalidInputError(msg)
        return out

    # -- encoding -------------------------------------------------------------------------------------
    def _tokenize(self, texts: list[str], is_query: bool) -> tuple[Any, Any, Any]:
        torch = require("torch", "colbert")
        s = self.settings
        marker = self._query_marker_id if is_query else self._doc_marker_id
        max_len = s.query_maxlen if is_query else s.doc_maxlen
        budget = max_len - (1 if marker is not None else 0)
        rows = self.tokenizer(texts, truncation=True, max_length=budget, add_special_tokens=True)["input_ids"]
        if marker is not None:
            rows = [[row[0], marker, *row[1:]] for row in rows]
        expand = is_query and s.query_expansion
        width = max_len if expand else max(len(r) for r in rows)
        pad_id = self._mask_id if expand else (self.tokenizer.pad_token_id or 0)
        ids = torch.full((len(rows), width), int(pad_id), dtype=torch.long)
        attention = torch.zeros((len(rows), width), dtype=torch.long)
        for i, row in enumerate(rows):
            ids[i, : len(row)] = torch.tensor(row, dtype=torch.long)
            attention[i, : len(row)] = 1
        keep = attention.clone()
        if expand:
            keep[:] = 1
            if s.attend_to_expansion:
                attention[:] = 1
        return ids, attention, keep

    def _encode(
        self, texts: list[str], *, is_query: bool, show_progress: bool, threads: int | None = None
    ) -> list[FloatMatrix]:
        """Encode ``texts`` with at most ``threads`` torch threads (``None``: torch's setting)."""
        torch = require("torch", "colbert")
        if not texts:
            return []
        out: list[FloatMatrix | None] = [None] * len(texts)
        bar = progress_bar(len(texts), desc="encoding", unit="doc", enabled=show_progress)
        with bar, torch_threads(threads), torch.inference_mode():
            for index in self._batch_order(texts):
                ids, attention, keep = self._tokenize([texts[i] for i in index], is_query)
                hidden = self.model(
                    input_ids=ids.to(self.device), attention_mask=attention.to(self.device)
                ).last_hidden_state
                for (weight, bias), activation in zip(self._dense, self._activations, strict=True):
                    hidden = torch.nn.functional.linear(hidden, weight, bias)
                    if activation == "tanh":
                        hidden = torch.tanh(hidden)
                if self.settings.normalize:
                    hidden = torch.nn.functional.normalize(hidden.float(), dim=-1)
                vectors = hidden.float().cpu().numpy()
                keep_np = keep.numpy().astype(bool)
                if not is_query and len(self._skip_ids):
                    keep_np &= ~np.isin(ids.numpy(), self._skip_ids)
                for row, i in enumerate(index):
                    mask = keep_np[row]
                    if not mask.any():  # a document of only punctuation: keep its [CLS]
                        mask = mask.copy()
                        mask[0] = True
                    out[i] = np.ascontiguousarray(vectors[row][mask], dtype=np.float32)
                bar.update(len(index))
        return [m for m in out if m is not None]

    def _batch_order(self, texts: list[str]) -> list[list[int]]:
        """Batches of text indices: sorted by length into batches (little padding), the longest batch first
        (an out-of-memory batch fails at once), the others in a seeded shuffle (a representative pace)."""
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]), reverse=True)
        batches = [order[lo : lo + self.batch_size] for lo in range(0, len(order), self.batch_size)]
        rest = batches[1:]
        random.Random(0).shuffle(rest)  # seeded: the same order every run
        return batches[:1] + rest

    # -- chunking -------------------------------------------------------------------------------------
    def chunker(self, chunk_tokens: int | None = None, overlap: int = 32) -> Any:
        """A chunker for :class:`~ragplug.retrievers.late_interaction.LateInteractionIndex`: token windows
        of ``chunk_tokens`` (default: what fits in ``doc_maxlen``) overlapping by ``overlap`` tokens,
        cut at token boundaries in the original text."""
        specials = 2 + (1 if self._doc_marker_id is not None else 0)
        size = chunk_tokens if chunk_tokens is not None else self.settings.doc_maxlen - specials
        if not isinstance(size, int) or size <= 0:
            msg = f"chunk_tokens must be a positive integer, got {size!r}"
            raise InvalidInputError(msg)
        if not isinstance(overlap, int) or not 0 <= overlap < size:
            msg = f"overlap must be an integer in [0, chunk_tokens), got {overlap!r}"
            raise InvalidInputError(msg)
        return TokenWindowChunker(self.tokenizer, size, overlap)


class TokenWindowChunker:
    """Split text into overlapping windows of tokens; each chunk is the original text between its tokens."""

    def __init__(self, tokenizer: Any, size: int, overlap: int) -> None:
        self.tokenizer, self.size, self.overlap = tokenizer, size, overlap

    def __call__(self, text: Any) -> list[Chunk]:
        if not isinstance(text, str):
            msg = f"the text chunker takes strings, got {type(text).__name__}"
            raise InvalidInputError(msg)
        # the whole text on purpose: verbose=False keeps transformers from warning that it is too long
        encoding = self.tokenizer(text, add_special_tokens=False, return_offsets_mapping=True, verbose=False)
        offsets = encoding["offset_mapping"]
        if len(offsets) <= self.size:
            return [Chunk(text, text, 0)]
        chunks = []
        step = self.size - self.overlap
        for lo in range(0, len(offsets), step):
            window = offsets[lo : lo + self.size]
            start, end = window[0][0], window[-1][1]
            piece = text[start:end]
            chunks.append(Chunk(piece, piece, start))
            if lo + self.size >= len(offsets):
                break
        return chunks


def is_colbert_format(settings: ColBERTSettings) -> bool:
    return settings.format is not CheckpointFormat.HF
