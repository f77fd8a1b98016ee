"""Reading ColBERT checkpoints: where they are, which format, and the settings they carry.

Three layouts are recognised from the files in the checkpoint, never from its name or path:

* **PyLate / sentence-transformers** (``modules.json`` plus ``config_sentence_transformers.json`` with
  ``query_prefix`` / ``document_prefix``): a Transformer module at the root and one or more ``Dense``
  modules (``1_Dense/`` ...) projecting to the ColBERT dimension. Markers, lengths, expansion and the
  punctuation skiplist come from ``config_sentence_transformers.json``.
* **Stanford / colbert-ai** (``artifact.metadata``, or ``HF_ColBERT`` in ``config.json``'s architectures):
  BERT weights under ``bert.`` plus ``linear.weight`` in one weights file; markers ``[unused0]`` /
  ``[unused1]``, ``query_maxlen``, ``doc_maxlen``, ``mask_punctuation``, ``attend_to_mask_tokens`` from
  ``artifact.metadata``.
* **Plain Hugging Face encoder** (anything else with a ``config.json``, e.g. all-MiniLM-L6-v2): used as
  a raw token-level encoder: no markers, no [MASK] expansion, every token kept, no projection.

Weights are read only from safetensors files: a checkpoint that ships only pickled ``*.bin`` weights is
refused (they can run code when loaded).
"""

from __future__ import annotations

import difflib
import functools
import hashlib
import json
import os
import re
import string
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any

from ragplug.errors import InvalidInputError

__all__ = ["CheckpointFormat", "ColBERTSettings", "DenseLayer", "read_settings", "resolve_checkpoint"]

_HUB_PATTERNS = ["*.json", "*.safetensors", "*.txt", "*.model", "artifact.metadata", "*/*.json", "*/*.safetensors"]


class CheckpointFormat(str, Enum):
    PYLATE = "pylate"
    STANFORD = "stanford"
    HF = "hf"


@dataclass(frozen=True)
class DenseLayer:
    """One projection: a safetensors file with ``linear.weight`` (and maybe ``linear.bias``)."""

    weights: Path
    activation: str = "identity"


@dataclass(frozen=True)
class ColBERTSettings:
    """How a checkpoint encodes, resolved from its files (and optional user overrides)."""

    format: CheckpointFormat
    query_marker: str | None = field(default=None, metadata={"help": "token inserted after [CLS] in queries"})
    document_marker: str | None = field(default=None, metadata={"help": "token inserted after [CLS] in documents"})
    query_maxlen: int = 32
    doc_maxlen: int = 180
    query_expansion: bool = field(default=False, metadata={"help": "pad queries to query_maxlen with [MASK]"})
    attend_to_expansion: bool = False
    skiplist: tuple[str, ...] = field(default=(), metadata={"help": "document tokens dropped (punctuation)"})
    normalize: bool = True
    dense: tuple[DenseLayer, ...] = ()
    transformer_path: Path = Path()

    def __post_init__(self) -> None:
        for name in ("query_maxlen", "doc_maxlen"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 4:
                msg = f"{name} must be an integer >= 4, got {value!r}"
                raise InvalidInputError(msg)

    def describe(self) -> dict[str, Any]:
        out = asdict(self)
        out["format"] = self.format.value
        out["dense"] = [d.activation for d in self.dense]
        out.pop("transformer_path")
        return out


_DRIVE = re.compile(r"^[A-Za-z]:[\\/]")


def looks_like_path(name: str | Path) -> bool:
    """Whether ``name`` can only mean a local folder: a :class:`~pathlib.Path`, or text that starts with
    ``.``, ``/``, ``~`` or a drive (``C:\\``), holds a backslash or more than one ``/``. A hub id is
    ``name`` or ``org/name``, and neither part may start with a dot."""
    if isinstance(name, Path):
        return True
    return name.startswith((".", "/", "~")) or "\\" in name or name.count("/") > 1 or bool(_DRIVE.match(name))


def _closest(name: str, folder: Path) -> str | None:
    """The entry of ``folder`` whose name is closest to ``name`` (case ignored), if one is close."""
    try:
        entries = {p.name.lower(): p.name for p in folder.iterdir()}
    except OSError:
        return None
    close = difflib.get_close_matches(name.lower(), list(entries), n=1, cutoff=0.6)
    return entries[close[0]] if close else None


def _no_such_folder(name: str | Path) -> str:
    """``no such folder <name>``, then where the path stops existing and the closest name found there."""
    path = Path(name).expanduser().absolute()
    found = path
    while not found.exists() and found != found.parent:
        found = found.parent
    missing = path.relative_to(found).parts[0] if path != found else path.name
    msg = f"no such folder {name}"
    if str(path) != str(name):
        msg += f" ({path})"
    if found.is_dir():
        closest = _closest(missing, found)
        msg += f": {found} has no {missing!r}" + (f"; closest: {closest!r}" if closest else "")
    else:
        msg += f": {found} is a file"
    if "\\" in str(name) and os.sep == "/":
        msg += " (a backslash is not a folder separator here: use /)"
    return msg


def resolve_checkpoint(
    name_or_path: str | Path,
    revision: str | None = None,
    *,
    patterns: Sequence[str] = _HUB_PATTERNS,
    what: str = "model",
) -> Path:
    """A local folder as is; otherwise a hub id fetched (or found in the cache) by huggingface_hub, the
    files matching ``patterns`` only (ColBERT's by default; the page encoders add chat templates).

    A name that can only be a path (:func:`looks_like_path`) and is not a folder is reported as a missing
    folder, with the closest existing name, never sent to the hub."""
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        return path
    if path.exists():
        msg = f"{path} is a file; a model is a folder or a hub id"
        raise InvalidInputError(msg)
    if looks_like_path(name_or_path):
        raise InvalidInputError(_no_such_folder(name_or_path))
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(str(name_or_path), revision=revision, allow_patterns=list(patterns)))
    except Exception as err:  # huggingface_hub raises many types (offline, missing repo, network)
        msg = (
            f"cannot find {what} {str(name_or_path)!r}: it is not a local folder and the hub did not provide it "
            f"({type(err).__name__}: {err}). Pass a local folder, or allow hub downloads."
        )
        if path.parent != Path() and path.parent.is_dir():  # "models/colbrt" with a local models/ folder
            msg += f" If you meant a local folder: {_no_such_folder(name_or_path)}."
        raise InvalidInputError(msg) from err


def _read_json(file: Path) -> dict[str, Any]:
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        msg = f"cannot read {file}: {err}"
        raise InvalidInputError(msg) from err
    if not isinstance(data, dict):
        msg = f"{file} is not a JSON object"
        raise InvalidInputError(msg)
    return data


def _safetensors_in(folder: Path, what: str) -> Path:
    for name in ("model.safetensors", "pytorch_model.safetensors"):
        if (folder / name).is_file():
            return folder / name
    if any(folder.glob("*.bin")) or any(folder.glob("*.pt")):
        msg = (
            f"{what} in {folder} has only pickled weights (*.bin / *.pt); ragplug loads safetensors only. "
            "Convert them once in a trusted environment (save_pretrained(..., safe_serialization=True))."
        )
        raise InvalidInputError(msg)
    msg = f"{what}: no model.safetensors in {folder}"
    raise InvalidInputError(msg)


_ACTIVATIONS = {
    "torch.nn.modules.linear.identity": "identity",
    "identity": "identity",
    "torch.nn.modules.activation.tanh": "tanh",
    "tanh": "tanh",
}


def _listing(folder: Path, limit: int = 12) -> str:
    """What ``folder`` holds, for an error message: ``a.txt, b/, ...``."""
    try:
        entries = sorted(f"{p.name}/" if p.is_dir() else p.name for p in folder.iterdir())
    except OSError as err:
        return f"cannot list it: {err}"
    if not entries:
        return "it is empty"
    more = f", ... ({len(entries) - limit} more)" if len(entries) > limit else ""
    return "it holds " + ", ".join(entries[:limit]) + more


def _not_a_model(folder: Path) -> str:
    """Why ``folder`` (which has no ``config.json``) is not a model, what it holds, and where one may be."""
    weights = "" if any(folder.glob("*.safetensors")) else " and no *.safetensors weights"
    msg = f"{folder} holds no model: config.json not found{weights}; {_listing(folder)}"
    inside = sorted(p.parent.name for p in folder.glob("*/config.json") if any(p.parent.glob("*.safetensors")))
    if inside:
        msg += f". A model is in the subfolder {folder / inside[0]}" + (" (and others)" if len(inside) > 1 else "")
    return msg


def _check_weights(folder: Path) -> None:
    """A transformer folder has safetensors weights: refuse pickles, and say what is there instead."""
    if any(folder.glob("*.safetensors")):
        return
    if any(folder.glob("*.bin")) or any(folder.glob("*.pt")) or any(folder.glob("*.pth")):
        msg = (
            f"the model in {folder} has only pickled weights (*.bin / *.pt); ragplug loads safetensors only. "
            "Convert them once in a trusted environment (save_pretrained(..., safe_serialization=True))."
        )
        raise InvalidInputError(msg)
    msg = f"{folder} has a config.json but no model weights (no *.safetensors); {_listing(folder)}"
    raise InvalidInputError(msg)


def read_settings(folder: Path) -> ColBERTSettings:
    """Detect the checkpoint format of ``folder`` and read its encoding settings; a folder without a
    model (no ``config.json``, no safetensors weights) is refused with what it holds instead."""
    if not (folder / "config.json").is_file():
        raise InvalidInputError(_not_a_model(folder))
    settings = _detect(folder)
    _check_weights(settings.transformer_path)
    return settings


def _detect(folder: Path) -> ColBERTSettings:
    st_config_file = folder / "config_sentence_transformers.json"
    st_config = _read_json(st_config_file) if st_config_file.is_file() else {}
    if (folder / "modules.json").is_file() and ("query_prefix" in st_config or "document_prefix" in st_config):
        return _pylate_settings(folder, st_config)
    config = _read_json(folder / "config.json")
    if (folder / "artifact.metadata").is_file() or "HF_ColBERT" in (config.get("architectures") or []):
        return _stanford_settings(folder)
    max_len = int(config.get("max_position_embeddings", 512))
    return ColBERTSettings(
        format=CheckpointFormat.HF,
        query_maxlen=min(max_len, 512),
        doc_maxlen=min(max_len, 512),
        transformer_path=folder,
    )


def _pylate_settings(folder: Path, st_config: dict[str, Any]) -> ColBERTSettings:
    modules = json.loads((folder / "modules.json").read_text(encoding="utf-8"))
    dense: list[DenseLayer] = []
    transformer_path = folder
    for module in sorted(modules, key=lambda m: int(m.get("idx", 0))):
        kind = str(module.get("type", ""))
        sub = folder / str(module.get("path", ""))
        if kind.endswith("Transformer"):
            transformer_path = sub
        elif kind.endswith("Dense"):
            dense_config = _read_json(sub / "config.json")
            activation = str(dense_config.get("activation_function", "identity")).lower()
            if activation not in _ACTIVATIONS:
                msg = f"Dense module {sub} uses activation {activation!r}; supported: identity, tanh"
                raise InvalidInputError(msg)
            dense.append(DenseLayer(_safetensors_in(sub, "Dense module"), _ACTIVATIONS[activation]))
    if not dense:
        msg = f"{folder} declares ColBERT prefixes but has no Dense projection module"
        raise InvalidInputError(msg)
    return ColBERTSettings(
        format=CheckpointFormat.PYLATE,
        query_marker=(st_config.get("query_prefix") or "").strip() or None,
        document_marker=(st_config.get("document_prefix") or "").strip() or None,
        query_maxlen=int(st_config.get("query_length", 32)),
        doc_maxlen=int(st_config.get("document_length", 180)),
        query_expansion=bool(st_config.get("do_query_expansion", True)),
        attend_to_expansion=bool(st_config.get("attend_to_expansion_tokens", False)),
        skiplist=tuple(st_config.get("skiplist_words", ()) or ()),
        dense=tuple(dense),
        transformer_path=transformer_path,
    )


def _stanford_settings(folder: Path) -> ColBERTSettings:
    meta_file = folder / "artifact.metadata"
    meta = _read_json(meta_file) if meta_file.is_file() else {}
    return ColBERTSettings(
        format=CheckpointFormat.STANFORD,
        query_marker=str(meta.get("query_token_id", "[unused0]")),
        document_marker=str(meta.get("doc_token_id", "[unused1]")),
        query_maxlen=int(meta.get("query_maxlen", 32)),
        doc_maxlen=int(meta.get("doc_maxlen", 180)),
        query_expansion=True,
        attend_to_expansion=bool(meta.get("attend_to_mask_tokens", False)),
        skiplist=tuple(string.punctuation) if meta.get("mask_punctuation", True) else (),
        dense=(DenseLayer(_safetensors_in(folder, "Stanford ColBERT checkpoint")),),
        transformer_path=folder,
    )


_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt", "vocab.json")


def fingerprint_files(settings: ColBERTSettings) -> str:
    """Hash of what determines the vectors: the settings, and the whole content of the model's config,
    weights (every ``*.safetensors`` of the checkpoint, shards included, and the dense heads) and tokenizer
    files. Two checkpoints with the same shapes but other weights get different fingerprints."""
    digest = hashlib.sha256(json.dumps(settings.describe(), sort_keys=True, default=str).encode())
    root = settings.transformer_path
    files = [root / "config.json", *sorted(root.glob("*.safetensors")), *(d.weights for d in settings.dense)]
    files += [root / name for name in _TOKENIZER_FILES if (root / name).is_file()]
    return digest_files(digest, files)


def digest_files(digest: Any, files: Sequence[Path]) -> str:
    """``digest`` (a hashlib object, already fed the settings) updated with each file's name, size and full
    content, once per real file (links followed); its first 16 hex digits."""
    seen: set[Path] = set()
    for file in files:
        resolved = file.resolve()
        if resolved in seen:
            continue
        seen.add(resolved)
        stat = resolved.stat()
        digest.update(f"{file.name}:{stat.st_size}:".encode())
        digest.update(_content_digest(str(resolved), stat.st_size, stat.st_mtime_ns, stat.st_ino))
    return str(digest.hexdigest()[:16])


@functools.lru_cache(maxsize=256)
def _content_digest(path: str, size: int, mtime_ns: int, inode: int) -> bytes:
    """SHA-256 of a file's content (cached per process while its size, mtime and inode stay the same)."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 22), b""):
            digest.update(block)
    return digest.digest()
