"""ColPali-family page encoders on colpali-engine: a page image (or a query) in, one multi-vector out.

:class:`ColPaliEncoder` satisfies the engine's :class:`~ragplug.retrievers.late_interaction.Encoder`
protocol for every late-interaction family colpali-engine ships (:class:`Family`). The family is read from
the checkpoint's ``config.json`` (``architectures``, else ``model_type``) and, for a LoRA adapter checkpoint
(``adapter_config.json``, as ``vidore/colqwen2-v1.0`` is), from the config of the base model it names;
never from a path or hub id, so a folder named after another family loads what it holds.

Loading refuses what would silently encode with random weights: a checkpoint whose projection head (or any
other weight) is missing from its files, and an adapter whose tensors did not all load into the model (the
way colpali-engine once fell back to a random ``custom_text_proj``). Adapters are loaded onto their base with
transformers' own key conversion, checked, then merged into the base weights (as fast as a full checkpoint).
Weights are read from safetensors only.

Pages are encoded with the processor's page prompt; every non-padding position is kept (the image patches
and the few prompt tokens, as colpali-engine scores them). Queries get the processor's query prompt and
augmentation tokens. With ``pool_factor`` (2 or more) each page's vectors are merged by colpali-engine's
:class:`~colpali_engine.compression.token_pooling.HierarchicalTokenPooler` into about ``1/pool_factor`` as
many; queries are never pooled. The pool factor is part of the encoder's identity and fingerprint, so an
index built with one factor refuses query vectors from an encoder with another.

``pooler="single"`` pools with :func:`~ragplug.retrievers.colpali.pooling.pool_vectors` instead (single
linkage, the page prompt's rows kept).

``max_visual_tokens`` caps the image tokens of a page: the Qwen families (whose processors resize to a pixel
budget taken from the checkpoint, up to ~2,500 tokens for a Letter page with Qwen's default) get a budget of that
many merged patches, ColIdefics3 / ColModernVBert fewer crops, and the fixed-size families (ColPali, ColGemma3)
refuse a cap below their one image's tokens. A cap that lowers the checkpoint's setting is part of the identity
and fingerprint, as the pool factor is.

No projection to fewer dimensions is offered: doing it right means a projection fitted on the page vectors
(PCA) and stored with the index, applied to queries as well; a fixed random projection costs retrieval
quality the benchmarks have not measured. Token pooling is the supported way to make pages smaller.

The default dtype is bfloat16 where the hardware computes it natively (a CPU with ``avx512_bf16`` or AMX
flags, a CUDA device that supports it), else float32 (:func:`default_dtype`); ``dtype=`` overrides it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from ragplug._extras import require
from ragplug._progress import progress_bar, quiet_transformers, wants_progress
from ragplug._threads import torch_threads
from ragplug.errors import InvalidInputError
from ragplug.retrievers.colbert.checkpoint import (
    _check_weights,
    _not_a_model,
    _read_json,
    digest_files,
    resolve_checkpoint,
)
from ragplug.retrievers.colbert.encoder import SMALL_QUERY_BATCH
from ragplug.retrievers.colpali.pooling import pool_vectors
from ragplug.retrievers.late_interaction.base import EncoderIdentity, FloatMatrix, check_text

__all__ = ["DEFAULT_MODEL", "ColPaliEncoder", "Family", "PageCheckpoint", "default_dtype", "read_checkpoint"]

logger = logging.getLogger(__name__)

#: The default checkpoint: ColQwen2 v1.0, a LoRA adapter on ``vidore/colqwen2-base`` (both fetched from the hub).
DEFAULT_MODEL = "vidore/colqwen2-v1.0"
#: Page poolers: colpali-engine's Ward clustering, or ragplug's single linkage with the page prompt kept.
POOLERS = ("ward", "single")

_HUB_PATTERNS = ["*.json", "*.jinja", "*.safetensors", "*.txt", "*.model"]
_PROCESSOR_FILES = (
    "preprocessor_config.json",
    "processor_config.json",
    "video_preprocessor_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "chat_template.json",
    "chat_template.jinja",
    "vocab.json",
    "merges.txt",
    "tokenizer.model",
)
_ENCODING_VERSION = 1  # bump when the vectors this module makes for the same weights change


class Family(Enum):
    """A late-interaction model family of colpali-engine: its model and processor classes, the
    ``model_type`` values of its configs, the attribute holding its projection head, how its processor sizes
    a page (``sizing``: ``"pixels"``, a pixel budget in merged patches, as Qwen's processors resize;
    ``"crops"``, a longest edge cut into fixed-size crops plus the whole page, as Idefics3's; ``"fixed"``, one
    fixed-size image), and two quirks: whether its forward pass also runs a language-model head the encoder
    does not use (its logits are then limited to one position: PaliGemma's vocabulary is 257k words), and
    whether a query's vectors are the same in a padded batch as alone (``pads_queries``; otherwise queries are
    encoded one at a time). PaliGemma's are not, under SDPA attention in transformers 5.24 (up to 0.06 per
    coordinate): its text attention is marked non-causal (for the bidirectional image prefix), and a batch
    without padding (one query, or queries of one length) gets no mask at all, so SDPA lets every token see the
    whole query; a padded batch gets a causal mask. Eager attention is causal either way. Every other family
    gives the same vectors batched (within 2e-7, ``tests/test_colpali_encoder.py``)."""

    COLPALI = ("ColPali", "ColPaliProcessor", ("paligemma",), "custom_text_proj", "fixed", True, False)
    COLQWEN2 = ("ColQwen2", "ColQwen2Processor", ("qwen2_vl",), "custom_text_proj", "pixels")
    COLQWEN2_5 = ("ColQwen2_5", "ColQwen2_5_Processor", ("qwen2_5_vl",), "custom_text_proj", "pixels")
    COLQWEN2_5_OMNI = (
        "ColQwen2_5Omni",
        "ColQwen2_5OmniProcessor",
        ("qwen2_5_omni_thinker",),
        "custom_text_proj",
        "pixels",
    )
    COLQWEN3 = ("ColQwen3", "ColQwen3Processor", ("qwen3_vl",), "custom_text_proj", "pixels")
    COLQWEN3_5 = ("ColQwen3_5", "ColQwen3_5Processor", ("qwen3_5",), "custom_text_proj", "pixels")
    COLIDEFICS3 = ("ColIdefics3", "ColIdefics3Processor", ("idefics3",), "linear", "crops")  # ColSmol
    COLMODERNVBERT = ("ColModernVBert", "ColModernVBertProcessor", ("modernvbert",), "custom_text_proj", "crops")
    COLGEMMA3 = ("ColGemma3", "ColGemmaProcessor3", ("gemma3",), "custom_text_proj", "fixed")

    def __init__(
        self,
        model_class: str,
        processor_class: str,
        model_types: tuple[str, ...],
        projection: str,
        sizing: str,
        runs_lm_head: bool = False,
        pads_queries: bool = True,
    ):
        self.model_class = model_class
        self.processor_class = processor_class
        self.model_types = model_types
        self.projection = projection
        self.sizing = sizing
        self.runs_lm_head = runs_lm_head
        self.pads_queries = pads_queries

    @classmethod
    def of_config(cls, config: dict[str, Any], where: Path) -> Family:
        """The family a ``config.json`` describes: a colpali-engine class in ``architectures``, else the
        ``model_type`` (a plain VLM with that type loads, and is then refused for its missing head)."""
        architectures = [str(a) for a in config.get("architectures") or []]
        model_type = str(config.get("model_type", ""))
        by_class = {f.model_class: f for f in cls}
        single = [a for a in architectures if a.startswith("Bi") and f"Col{a[2:]}".split("Proj")[0] in by_class]
        if single:
            msg = (
                f"{where} holds {single[0]}, a single-vector model (one embedding per page); page retrieval on "
                "ragplug's late-interaction engine needs its multi-vector Col* counterpart"
            )
            raise InvalidInputError(msg)
        family = next((by_class[a] for a in architectures if a in by_class), None)
        if family is None:
            family = next((f for f in cls if model_type in f.model_types), None)
        if family is None:
            known = ", ".join(f.model_class for f in cls)
            msg = (
                f"{where}: not a ColPali-family checkpoint (config.json: architectures {architectures}, model_type "
                f"{model_type!r}); colpali-engine ships {known}"
            )
            raise InvalidInputError(msg)
        if model_type and model_type not in family.model_types:
            msg = (
                f"{where}: config.json names {family.model_class} but model_type {model_type!r} "
                f"(a {family.model_class} config has model_type {family.model_types[0]!r})"
            )
            raise InvalidInputError(msg)
        return family


@dataclass(frozen=True)
class PageCheckpoint:
    """Where a checkpoint's parts are: the model weights (``base``), an optional LoRA ``adapter`` folder on
    top of them, and the folder whose processor files to use."""

    family: Family
    base: Path
    adapter: Path | None
    processor: Path
    base_name: str

    def files(self) -> list[Path]:
        """Every file that determines the vectors: configs, weights, processor and tokenizer files."""
        out: list[Path] = []
        for folder in (self.base, self.adapter, self.processor):
            if folder is None:
                continue
            out += [folder / n for n in ("config.json", "adapter_config.json") if (folder / n).is_file()]
            out += sorted(folder.glob("*.safetensors"))
            out += [folder / n for n in _PROCESSOR_FILES if (folder / n).is_file()]
        return out


def _resolve(name: str | Path, revision: str | None, what: str = "model") -> Path:
    """A local folder (errors as for ColBERT checkpoints), or a hub id fetched with the files a processor
    needs (chat templates included)."""
    return resolve_checkpoint(name, revision, patterns=_HUB_PATTERNS, what=what)


def _has_processor(folder: Path) -> bool:
    has_tokenizer = any((folder / n).is_file() for n in ("tokenizer.json", "tokenizer_config.json"))
    has_images = any((folder / n).is_file() for n in ("preprocessor_config.json", "processor_config.json"))
    return has_tokenizer and has_images


def read_checkpoint(name: str | Path, revision: str | None = None) -> PageCheckpoint:
    """Find a checkpoint's folders and its family, from its files only."""
    folder = _resolve(name, revision)
    adapter_file = folder / "adapter_config.json"
    if not adapter_file.is_file():
        if not (folder / "config.json").is_file():
            raise InvalidInputError(_not_a_model(folder))
        _check_weights(folder)
        family = Family.of_config(_read_json(folder / "config.json"), folder)
        return PageCheckpoint(family, folder, None, folder, str(name))
    base_name = str(_read_json(adapter_file).get("base_model_name_or_path") or "")
    if not base_name:
        msg = f"{adapter_file} names no base model (base_model_name_or_path); the adapter cannot be loaded alone"
        raise InvalidInputError(msg)
    if not (folder / "adapter_model.safetensors").is_file():
        pickled = (folder / "adapter_model.bin").is_file()
        msg = (
            f"the adapter in {folder} has only pickled weights (adapter_model.bin); ragplug loads safetensors only"
            if pickled
            else f"{folder} has adapter_config.json but no adapter_model.safetensors"
        )
        raise InvalidInputError(msg)
    try:
        base = _resolve(base_name, None, what=f"base model (of the adapter in {folder})")
    except InvalidInputError as err:
        msg = f"the adapter in {folder} is for the base model {base_name!r}, which cannot be loaded: {err}"
        raise InvalidInputError(msg) from err
    if not (base / "config.json").is_file():
        raise InvalidInputError(_not_a_model(base))
    _check_weights(base)
    own_config = folder / "config.json"
    family = Family.of_config(_read_json(own_config if own_config.is_file() else base / "config.json"), folder)
    base_family = Family.of_config(_read_json(base / "config.json"), base)
    if base_family is not family:
        msg = f"the adapter in {folder} is a {family.model_class} one, but its base {base} is {base_family.model_class}"
        raise InvalidInputError(msg)
    processor = folder if _has_processor(folder) else base
    return PageCheckpoint(family, base, folder, processor, base_name)


def cpu_supports_bf16(cpuinfo: str | Path = "/proc/cpuinfo") -> bool:
    """Whether the CPU computes bfloat16 natively (``avx512_bf16`` or AMX flags); ``False`` when unknown."""
    try:
        text = Path(cpuinfo).read_text(encoding="utf-8", errors="replace")
    except OSError:
        return False
    flags: set[str] = set()
    for line in text.splitlines():
        if line.startswith("flags"):
            flags.update(line.partition(":")[2].split())
    return bool(flags & {"avx512_bf16", "amx_bf16"})


def default_dtype(device: str) -> str:
    """``"bfloat16"`` where the device computes it natively (a CUDA device that supports it; a CPU with
    ``avx512_bf16`` or AMX), else ``"float32"`` (bfloat16 emulated on other CPUs is slower than float32)."""
    kind = device.split(":")[0]
    if kind == "cuda":
        torch = require("torch", "colpali")
        return "bfloat16" if torch.cuda.is_bf16_supported() else "float32"
    if kind == "cpu":
        return "bfloat16" if cpu_supports_bf16() else "float32"
    return "float32"


def _positive(value: Any, name: str, *, allow_none: bool = False) -> None:
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        msg = f"{name} must be a positive integer{' or None' if allow_none else ''}, got {value!r}"
        raise InvalidInputError(msg)


class ColPaliEncoder:
    """Encode page images and queries into multi-vectors with a ColPali-family checkpoint.

    Args:
        model: hub id or local folder (a full checkpoint, or a LoRA adapter naming its base model).
        device: ``"cpu"``, ``"cuda"``, ``"cuda:1"``...; default CUDA when available.
        dtype: ``"bfloat16"``, ``"float32"`` or ``"float16"``; default :func:`default_dtype` for the device.
        batch_size: pages per forward pass.
        pool_factor: merge each page's vectors into about ``1/pool_factor`` as many (hierarchical token
            pooling); ``None`` or 1 keeps them all. Recorded in the identity: an index remembers it.
        pooler: how pages are pooled: ``"ward"`` (colpali-engine's ``HierarchicalTokenPooler``, what the
            ColPali authors evaluated) or ``"single"`` (:func:`~ragplug.retrievers.colpali.pooling.pool_vectors`:
            single linkage, the page prompt's text tokens kept as they are; at pool factor 3 it kept 0.957 of
            the unpooled top 10 against Ward's 0.871 on random weights, 11 times faster, but it is unproven on
            trained weights). Recorded in the identity when not ``"ward"``.
        revision: hub revision of ``model``.
        query_threads: torch threads for an ``encode_queries`` call of a few queries (see
            :class:`~ragplug.retrievers.colbert.ColBERTEncoder`); ``None`` leaves torch's setting alone.
        max_visual_tokens: at most this many image tokens per page (before pooling); ``None`` keeps the
            checkpoint's processor setting. See :meth:`_cap_visual_tokens` for what each family does with it.
            Recorded in the identity when it lowers the checkpoint's setting: an index remembers it.

    Items of :meth:`encode_documents` are PIL images, or objects with an ``image`` attribute holding one
    (:class:`ragplug.retrievers.colpali.pages.Page`).
    """

    def __init__(
        self,
        model: str | Path = DEFAULT_MODEL,
        *,
        device: str | None = None,
        dtype: str | None = None,
        batch_size: int = 4,
        pool_factor: int | None = None,
        revision: str | None = None,
        query_threads: int | None = 1,
        max_visual_tokens: int | None = None,
        pooler: str = "ward",
    ) -> None:
        torch = require("torch", "colpali")
        engine = require("colpali_engine.models", "colpali")
        _positive(batch_size, "batch_size")
        _positive(query_threads, "query_threads", allow_none=True)
        _positive(pool_factor, "pool_factor", allow_none=True)
        _positive(max_visual_tokens, "max_visual_tokens", allow_none=True)
        if pooler not in POOLERS:
            msg = f"unknown pooler {pooler!r}; one of {list(POOLERS)}"
            raise InvalidInputError(msg)
        self.pooler = pooler
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        dtype_name = dtype if dtype is not None else default_dtype(str(self.device))
        torch_dtype = getattr(torch, dtype_name, None) if isinstance(dtype_name, str) else None
        if not isinstance(torch_dtype, torch.dtype) or not torch_dtype.is_floating_point:
            msg = f"unknown dtype {dtype!r}; use bfloat16, float32 or float16"
            raise InvalidInputError(msg)
        self.name = str(model)
        self.batch_size = batch_size
        self.query_threads = query_threads
        self.pool_factor = pool_factor if pool_factor and pool_factor > 1 else None
        self.dtype = torch_dtype
        self.checkpoint = checkpoint = read_checkpoint(model, revision)
        family = checkpoint.family
        with quiet_transformers(load_report=False):  # the load report is judged here, below
            self.processor = getattr(engine, family.processor_class).from_pretrained(str(checkpoint.processor))
            self.max_visual_tokens = self._cap_visual_tokens(max_visual_tokens)
            model_class = getattr(engine, family.model_class)
            key_mapping = _key_mapping(model_class)
            try:
                loaded, info = model_class.from_pretrained(
                    str(checkpoint.base),
                    dtype=torch_dtype,
                    use_safetensors=True,
                    output_loading_info=True,
                    key_mapping=key_mapping,
                )
            except AttributeError as err:  # the class itself fails to build (ColQwen2_5Omni under transformers 5)
                raise InvalidInputError(_unbuildable(family, checkpoint.base, err)) from err
            _refuse_missing(loaded, info, checkpoint.base, family)
            _tie_unloaded_lm_head(loaded, checkpoint.base)
            if checkpoint.adapter is not None:
                self._load_adapter(loaded, checkpoint.adapter, family, key_mapping)
        self.model = loaded.to(self.device).eval().requires_grad_(False)
        self._dim = int(getattr(loaded, family.projection).out_features)
        self._pooler = require("colpali_engine.compression.token_pooling", "colpali").HierarchicalTokenPooler()
        local = Path(model).expanduser()
        settings: dict[str, Any] = {  # how to rebuild this encoder (LateInteractionIndex.open), what differs
            "encoder": "colpali",
            "model": str(local.resolve()) if local.is_dir() else str(model),
            **({"revision": revision} if revision else {}),
            "family": family.model_class,
            **({"base_model": checkpoint.base_name} if checkpoint.adapter is not None else {}),
            "pool_factor": self.pool_factor,
            **({"pooler": pooler} if pooler != "ward" and self.pool_factor is not None else {}),
            **({"max_visual_tokens": self.max_visual_tokens} if self.max_visual_tokens is not None else {}),
            "dtype": dtype_name,  # for reopening as built; not in the fingerprint (bf16 and fp32 vectors mix)
        }
        self._identity = EncoderIdentity(self.name, self._dim, self._fingerprint(settings), settings)
        logger.info(
            "loaded %s (%s, dim %d, %s) on %s", self.name, family.model_class, self._dim, dtype_name, self.device
        )

    def _cap_visual_tokens(self, cap: int | None) -> int | None:
        """Make the processor give at most ``cap`` image tokens per page; returns ``cap`` when that lowered
        the checkpoint's setting, ``None`` when the checkpoint already gives no more (nothing changes).

        - ``"pixels"`` (the Qwen families): the pixel budget (``size["longest_edge"]``) becomes ``cap`` merged
          patches, ``cap * (patch_size * merge_size) ** 2`` pixels (the minimum too, where it was above). Qwen's
          resize keeps at least one merged patch per side and rounds a page under its minimum up, so a page
          more than ``cap`` times wider than high (or a tiny one) can still get a few more.
        - ``"crops"`` (ColIdefics3 / ColSmol, ColModernVBert): a page is resized to a longest edge of ``k``
          crops and cut into up to ``k * k`` crops plus the whole page, ``image_seq_len`` tokens each; the
          longest edge becomes the largest ``k`` whose square page fits in ``cap`` (one crop, no splitting, at
          least).
        - ``"fixed"`` (ColPali, ColGemma3): every page is ``image_seq_length`` tokens; a lower cap is refused.
        """
        if cap is None:
            return None
        sizing = _SIZINGS[self.family.sizing]
        return cap if sizing(self.processor, cap, self.family) else None

    @staticmethod
    def _load_adapter(model: Any, adapter: Path, family: Family, key_mapping: dict[str, str] | None) -> None:
        """Load a LoRA adapter onto ``model`` with the key conversions its base was loaded with (so the old
        names in vidore's adapters, ``model.layers...``, map as colpali-engine maps them), refuse it unless
        every adapter tensor loaded into a module and every adapter module got its tensors, then merge it
        into the base weights."""
        require("peft", "colpali")
        from peft.tuners.tuners_utils import BaseTunerLayer
        from transformers.conversion_mapping import get_model_conversion_mapping

        conversions = get_model_conversion_mapping(model, key_mapping)
        info = model.load_adapter(str(adapter), adapter_name="default", weight_mapping=conversions)
        missing = sorted(info.missing_keys | {k[0] for k in info.mismatched_keys})
        unused = sorted(info.unexpected_keys)
        if missing or unused:
            head = [k for k in missing + unused if family.projection in k]
            what = f"its projection head ({family.projection}) and " if head else ""
            msg = (
                f"the adapter in {adapter} did not load into the {family.model_class} model: {what}"
                f"{len(missing) + len(unused)} tensors would be random or ignored (adapter weights not in the file: "
                f"{missing[:5]}; file tensors the model has no place for: {unused[:5]})"
            )
            raise InvalidInputError(msg)
        for module in model.modules():
            if isinstance(module, BaseTunerLayer):
                module.merge()

    def _fingerprint(self, settings: dict[str, Any]) -> str:
        """Hash of the family, pool factor and encoding version, and of the whole content of every config,
        weights, processor and tokenizer file (not of the model's name or folder: a moved copy matches)."""
        recorded = {k: v for k, v in settings.items() if k not in ("model", "revision", "base_model", "dtype")}
        digest = hashlib.sha256(json.dumps({**recorded, "v": _ENCODING_VERSION}, sort_keys=True).encode())
        return digest_files(digest, self.checkpoint.files())

    # -- Encoder protocol -----------------------------------------------------------------------------
    @property
    def identity(self) -> EncoderIdentity:
        return self._identity

    @property
    def dim(self) -> int:
        return self._dim

    @property
    def family(self) -> Family:
        return self.checkpoint.family

    def encode_queries(self, queries: Sequence[str]) -> list[FloatMatrix]:
        """One ``(n_tokens, dim)`` matrix per query: its tokens and the query augmentation tokens."""
        if isinstance(queries, str):
            msg = "pass a list of query strings, not one string"
            raise InvalidInputError(msg)
        texts = list(queries)
        for i, text in enumerate(texts):
            if not isinstance(text, str) or not check_text(text, f"query {i}").strip():
                msg = f"query {i} must be a non-empty string, got {text!r}"
                raise InvalidInputError(msg)
        threads = self.query_threads if len(texts) <= SMALL_QUERY_BATCH else None
        size = self.batch_size if self.family.pads_queries else 1
        out: list[FloatMatrix] = []
        with torch_threads(threads):
            for lo in range(0, len(texts), size):
                batch = self.processor.process_queries(texts[lo : lo + size])
                out += self._forward(batch, range(lo, lo + len(batch["input_ids"])), "query")
        return out

    def encode_documents(self, documents: Iterable[Any], *, show_progress: bool | None = None) -> list[FloatMatrix]:
        """One ``(n_vectors, dim)`` matrix per page (pooled when ``pool_factor`` is set), in input order.

        ``show_progress``: ``None`` (default) shows a bar (pages done, pages/s, time left) for more than
        :data:`~ragplug._progress.PROGRESS_THRESHOLD` pages; ``True`` / ``False`` force it."""
        images = _images(documents)
        enabled = wants_progress(show_progress, len(images))
        out: list[FloatMatrix | None] = [None] * len(images)
        with progress_bar(len(images), desc="encoding pages", unit="page", enabled=enabled) as bar:
            for index in self._batch_order(images):
                batch = self.processor.process_images([_rgb(images[i], i) for i in index])
                vectors = self._forward(batch, index, "page")
                if self.pool_factor is not None:
                    vectors = self._pool(vectors, self.pool_factor, self._prompt_rows(batch))
                for i, matrix in zip(index, vectors, strict=True):
                    out[i] = matrix
                bar.update(len(index))
        return [m for m in out if m is not None]

    # -- encoding -------------------------------------------------------------------------------------
    def _forward(self, batch: Any, index: Sequence[int], what: str) -> list[FloatMatrix]:
        """Run the model on a processed batch; one float32 matrix of the non-padding positions per item,
        refused (naming the item) when it holds NaN or infinity."""
        torch = require("torch", "colpali")
        inputs = {}
        for key, value in batch.items():
            if key == "labels":  # PaliGemma's processor makes training labels; they only feed a loss
                continue
            if isinstance(value, torch.Tensor):
                value = value.to(self.device, self.dtype) if value.is_floating_point() else value.to(self.device)
            inputs[key] = value
        if self.family.runs_lm_head:
            inputs["logits_to_keep"] = 1  # the vectors come from the hidden states; skip the vocabulary logits
        with torch.inference_mode():
            output = self.model(**inputs)
        keep = inputs["attention_mask"].bool().cpu().numpy()
        vectors = output.float().cpu().numpy()
        out = []
        for row, i in enumerate(index):
            matrix = np.ascontiguousarray(vectors[row][keep[row]], dtype=np.float32)
            if not np.isfinite(matrix).all():
                msg = (
                    f"{what} {i} encoded to NaN or infinite values ({self.family.model_class} in {self.dtype}); "
                    "try dtype='float32', or check the model's weights"
                )
                raise InvalidInputError(msg)
            out.append(matrix)
        return out

    def _prompt_rows(self, batch: Any) -> list[npt.NDArray[np.bool_]] | None:
        """Per page, which of its (unpadded) rows are not image tokens: the page prompt's text and specials."""
        image_token = getattr(self.processor, "image_token_id", None)
        if image_token is None or "input_ids" not in batch:
            return None
        ids, mask = batch["input_ids"].cpu().numpy(), batch["attention_mask"].bool().cpu().numpy()
        return [row[keep] != image_token for row, keep in zip(ids, mask, strict=True)]

    def _pool(
        self, vectors: list[FloatMatrix], factor: int, prompt: list[npt.NDArray[np.bool_]] | None = None
    ) -> list[FloatMatrix]:
        torch = require("torch", "colpali")
        out = []
        for row, matrix in enumerate(vectors):
            if len(matrix) < 2:  # nothing to merge (the pooler refuses a single vector)
                out.append(matrix)
                continue
            if self.pooler == "single":
                keep = prompt[row] if prompt is not None and len(prompt[row]) == len(matrix) else None
                out.append(pool_vectors(matrix, factor, keep=keep))
                continue
            pooled = self._pooler.pool_embeddings([torch.from_numpy(matrix)], pool_factor=factor)[0]
            out.append(np.ascontiguousarray(pooled.float().numpy(), dtype=np.float32))
        return out

    def _batch_order(self, images: list[Any]) -> list[list[int]]:
        """Batches of page indices: pages sorted by pixel count into batches (little padding), the largest
        batch first (one too large for the device fails at once), the others in a seeded shuffle (so the
        progress bar's rate is representative)."""
        order = sorted(range(len(images)), key=lambda i: images[i].width * images[i].height, reverse=True)
        batches = [order[lo : lo + self.batch_size] for lo in range(0, len(order), self.batch_size)]
        rest = batches[1:]
        random.Random(0).shuffle(rest)
        return batches[:1] + rest


def _cap_pixels(processor: Any, cap: int, family: Family) -> bool:
    """Lower a Qwen image processor's pixel budget to ``cap`` merged patches; whether it changed."""
    images = processor.image_processor
    tile = int(images.patch_size) * int(images.merge_size)  # pixels per side of one image token
    budget = cap * tile * tile
    if int(images.size["longest_edge"]) // (tile * tile) <= cap:
        return False
    images.size["longest_edge"] = budget
    if int(images.size["shortest_edge"] or 0) > budget:
        images.size["shortest_edge"] = budget
    logger.info("%s pages resized to at most %d pixels (%d image tokens)", family.model_class, budget, cap)
    return True


def _crop_tokens(crops_per_side: int, per_crop: int) -> int:
    """Image tokens of a square page cut into ``crops_per_side ** 2`` crops plus the whole page (one crop:
    the page alone, not split)."""
    return per_crop if crops_per_side <= 1 else per_crop * (crops_per_side**2 + 1)


def _cap_crops(processor: Any, cap: int, family: Family) -> bool:
    """Lower an Idefics3 image processor's longest edge to the most whole crops whose page fits ``cap``."""
    images = processor.image_processor
    per_crop = int(processor.image_seq_len)
    if not getattr(images, "do_image_splitting", True):
        return _cap_fixed(processor, cap, family, per_crop)
    crop = int(images.max_image_size["longest_edge"])
    if cap < per_crop:
        _refuse_below(cap, per_crop, family, "the least it makes of a page: the whole page as one crop")
    now = math.ceil(int(images.size["longest_edge"]) / crop)
    if _crop_tokens(now, per_crop) <= cap:
        return False
    side = max(k for k in range(1, now + 1) if _crop_tokens(k, per_crop) <= cap)
    images.size["longest_edge"] = side * crop
    logger.info(
        "%s pages resized to a longest edge of %d pixels (at most %d image tokens)",
        family.model_class,
        side * crop,
        _crop_tokens(side, per_crop),
    )
    return True


def _cap_fixed(processor: Any, cap: int, family: Family, tokens: int | None = None) -> bool:
    """A processor that makes every page the same number of image tokens: refuse a cap below it."""
    tokens = int(processor.image_seq_length) if tokens is None else tokens
    if cap < tokens:
        _refuse_below(cap, tokens, family, "what it makes of every page: one fixed-size image")
    return False


def _refuse_below(cap: int, tokens: int, family: Family, what: str) -> None:
    msg = (
        f"max_visual_tokens={cap} is below the {tokens} image tokens of this {family.model_class} checkpoint "
        f"({what}); pass max_visual_tokens >= {tokens} or None, or pool_factor to make pages smaller"
    )
    raise InvalidInputError(msg)


_SIZINGS = {"pixels": _cap_pixels, "crops": _cap_crops, "fixed": _cap_fixed}


def _key_mapping(model_class: Any) -> dict[str, str] | None:
    """The checkpoint key renames colpali-engine's ``from_pretrained`` applies for ``model_class`` (its own
    over its parent's), computed once so that the base and its adapter are loaded with the same ones."""
    mapping = dict(getattr(super(model_class, model_class), "_checkpoint_conversion_mapping", None) or {})
    mapping.update(vars(model_class).get("_checkpoint_conversion_mapping") or {})
    return mapping or None


def _unbuildable(family: Family, folder: Path, err: AttributeError) -> str:
    """Why colpali-engine's class for ``family`` could not be built: an attribute its code expects of the
    transformers class it extends is not there (ColQwen2_5Omni in colpali-engine 0.3.18 sets
    ``visual.config`` before transformers 5's thinker has made ``visual``, which moved to ``model.visual``)."""
    from importlib.metadata import version

    return (
        f"{folder}: colpali-engine {version('colpali-engine')} cannot build its {family.model_class} model under "
        f"transformers {version('transformers')} ({type(err).__name__}: {err}): its code expects an attribute that "
        "this transformers version's class or config does not have; use a colpali-engine / transformers pair "
        "that builds it"
    )


def _refuse_missing(model: Any, info: dict[str, Any], folder: Path, family: Family) -> None:
    """Refuse a checkpoint some of whose weights are not in its files (transformers would leave them random)."""
    missing = [str(k) for k in info.get("missing_keys", [])]
    missing += [str(k[0]) if isinstance(k, tuple) else str(k) for k in info.get("mismatched_keys", [])]
    missing = sorted(k for k in missing if "lm_head" not in k)  # a generation head the encoder never runs
    head = [k for k in missing if family.projection in k]
    if head:
        msg = (
            f"{folder}: the projection head of this {family.model_class} checkpoint is missing from its weights "
            f"({head}); colpali-engine would use a random one. Is this a base VLM rather than a trained "
            "ColPali-family checkpoint (or a base meant for an adapter)?"
        )
        raise InvalidInputError(msg)
    if missing:
        msg = f"{folder}: weights missing from the checkpoint (they would be random): {missing[:5]}"
        raise InvalidInputError(msg)
    unused = sorted(str(k) for k in info.get("unexpected_keys", []))
    if unused:
        logger.info("%s: %d checkpoint weights not used by the encoder: %s", folder, len(unused), unused[:5])


def _tie_unloaded_lm_head(model: Any, folder: Path) -> None:
    """Give a generation head that no file holds the input embeddings as weights, as a tied head has (a
    ColPali checkpoint saves none, and transformers 5 leaves it empty: the model could not even be moved to a
    device); refuse any other weight left empty."""
    embeddings = model.get_input_embeddings()
    for name, param in list(model.named_parameters()):
        if not param.is_meta:
            continue
        owner, _, attr = name.rpartition(".")
        if "lm_head" in name and embeddings is not None and param.shape == embeddings.weight.shape:
            setattr(model.get_submodule(owner), attr, embeddings.weight)
            continue
        msg = f"{folder}: weight {name!r} is in no file of the checkpoint (it would be random)"
        raise InvalidInputError(msg)


def _images(documents: Iterable[Any]) -> list[Any]:
    """The PIL image of each page (a PIL image, or an object with an ``image`` attribute holding one)."""
    image_module = require("PIL.Image", "colpali")
    if isinstance(documents, str | bytes | image_module.Image) or not isinstance(documents, Iterable):
        msg = f"pass a list of pages (PIL images or Page objects), got {type(documents).__name__}"
        raise InvalidInputError(msg)
    out = []
    for i, item in enumerate(documents):
        image = item if isinstance(item, image_module.Image) else getattr(item, "image", None)
        if not isinstance(image, image_module.Image):
            hint = " (a file name: open it, or load pages with ragplug.retrievers.colpali.pages)"
            msg = (
                f"page {i} must be a PIL image or a page with an .image, got {type(item).__name__}"
                f"{hint if isinstance(item, str | Path) else ''}"
            )
            raise InvalidInputError(msg)
        if image.width < 1 or image.height < 1:
            msg = f"page {i} is an empty image ({image.width}x{image.height})"
            raise InvalidInputError(msg)
        out.append(image)
    return out


def _rgb(image: Any, i: int) -> Any:
    try:
        return image.convert("RGB")
    except (OSError, ValueError) as err:  # a truncated or unreadable file behind a lazily loaded image
        msg = f"page {i} cannot be read as an image: {err}"
        raise InvalidInputError(msg) from err
