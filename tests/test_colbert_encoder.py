"""ColBERT checkpoints in every layout load through the real transformers path and encode as trained."""

from __future__ import annotations

import json
import shutil
import string
from pathlib import Path

import numpy as np
import pytest
import torch

from ragplug.errors import InvalidInputError
from ragplug.retrievers.colbert import CheckpointFormat, ColBERTEncoder


def _reference(folder: Path, ids: list[int], attention: list[int], dense: Path) -> np.ndarray:
    """Hand-written forward pass: BERT -> linear -> L2 normalisation (what a ColBERT checkpoint means)."""
    from safetensors.torch import load_file
    from transformers import BertModel

    model = BertModel.from_pretrained(folder).eval()
    weight = load_file(str(dense))["linear.weight"]
    with torch.inference_mode():
        hidden = model(input_ids=torch.tensor([ids]), attention_mask=torch.tensor([attention])).last_hidden_state[0]
    return torch.nn.functional.normalize(hidden @ weight.T, dim=-1).numpy()


def test_stanford_checkpoint_query_protocol(stanford_checkpoint: Path, stanford_encoder: ColBERTEncoder) -> None:
    enc = stanford_encoder
    assert enc.settings.format is CheckpointFormat.STANFORD
    assert enc.dim == 16 and enc.settings.query_maxlen == 12
    tok = enc.tokenizer
    body = tok("marley was dead", add_special_tokens=False)["input_ids"]
    ids = [tok.cls_token_id, tok.convert_tokens_to_ids("[unused0]"), *body, tok.sep_token_id]
    n_real = len(ids)
    ids += [tok.mask_token_id] * (12 - n_real)
    attention = [1] * n_real + [0] * (12 - n_real)  # attend_to_mask_tokens is false
    expected = _reference(stanford_checkpoint, ids, attention, stanford_checkpoint / "model.safetensors")
    (got,) = enc.encode_queries(["marley was dead"])
    assert got.shape == (12, 16)  # every position kept, [MASK] expansion included
    np.testing.assert_allclose(got, expected, atol=1e-5)


def test_stanford_checkpoint_document_protocol(stanford_checkpoint: Path, stanford_encoder: ColBERTEncoder) -> None:
    enc = stanford_encoder
    tok = enc.tokenizer
    text = "scrooge, the miser!"
    body = tok(text, add_special_tokens=False)["input_ids"]
    ids = [tok.cls_token_id, tok.convert_tokens_to_ids("[unused1]"), *body, tok.sep_token_id]
    expected = _reference(stanford_checkpoint, ids, [1] * len(ids), stanford_checkpoint / "model.safetensors")
    punct = {tok.convert_tokens_to_ids(c) for c in string.punctuation}
    keep = [i for i, t in enumerate(ids) if t not in punct]
    (got,) = enc.encode_documents([text])
    assert len(keep) < len(ids)  # the comma and the bang were dropped
    np.testing.assert_allclose(got, expected[keep], atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)


def test_document_truncated_to_doc_maxlen(stanford_encoder: ColBERTEncoder) -> None:
    (got,) = stanford_encoder.encode_documents(["ghost " * 200])
    assert got.shape[0] == 40


def test_pylate_checkpoint(pylate_checkpoint: Path, pylate_encoder: ColBERTEncoder) -> None:
    enc = pylate_encoder
    assert enc.settings.format is CheckpointFormat.PYLATE
    assert (enc.settings.query_marker, enc.settings.document_marker) == ("[Q]", "[D]")
    assert enc.settings.query_maxlen == 10 and enc.settings.doc_maxlen == 36
    tok = enc.tokenizer
    body = tok("tiny tim", add_special_tokens=False)["input_ids"]
    ids = [tok.cls_token_id, tok.convert_tokens_to_ids("[Q]"), *body, tok.sep_token_id]
    n_real = len(ids)
    ids += [tok.mask_token_id] * (10 - n_real)
    expected = _reference(
        pylate_checkpoint, ids, [1] * n_real + [0] * (10 - n_real), pylate_checkpoint / "1_Dense" / "model.safetensors"
    )
    (got,) = enc.encode_queries(["tiny tim"])
    np.testing.assert_allclose(got, expected, atol=1e-5)


def test_plain_encoder_keeps_every_token(plain_checkpoint: Path) -> None:
    enc = ColBERTEncoder(plain_checkpoint, device="cpu")
    assert enc.settings.format is CheckpointFormat.HF and enc.dim == 32
    n_tokens = len(enc.tokenizer("bob cratchit, the clerk.")["input_ids"])
    (query,) = enc.encode_queries(["bob cratchit, the clerk."])
    (doc,) = enc.encode_documents(["bob cratchit, the clerk."])
    assert query.shape == doc.shape == (n_tokens, 32)  # no markers, no expansion, punctuation kept
    np.testing.assert_allclose(query, doc, atol=1e-5)


def test_batching_and_order_do_not_change_vectors(stanford_checkpoint: Path) -> None:
    texts = ["a short one", "a much longer document about the ghost of christmas yet to come", "marley"]
    one_by_one = [ColBERTEncoder(stanford_checkpoint, batch_size=1).encode_documents([t])[0] for t in texts]
    batched = ColBERTEncoder(stanford_checkpoint, batch_size=8).encode_documents(texts)
    for a, b in zip(one_by_one, batched, strict=True):
        np.testing.assert_allclose(a, b, atol=1e-5)


def test_minilm_is_a_plain_encoder(minilm_encoder: ColBERTEncoder) -> None:
    assert minilm_encoder.settings.format is CheckpointFormat.HF
    assert minilm_encoder.dim == 384


def test_identity_changes_with_weights(stanford_checkpoint: Path, pylate_checkpoint: Path, tmp_path: Path) -> None:
    a = ColBERTEncoder(stanford_checkpoint).identity
    assert a == ColBERTEncoder(stanford_checkpoint).identity
    assert a.fingerprint != ColBERTEncoder(pylate_checkpoint).identity.fingerprint


def test_identity_covers_the_content_of_the_weights(tokenizer_dir: Path, tmp_path: Path) -> None:
    """Two checkpoints with the same shapes whose weights differ only in the middle of a multi-MB file."""
    from safetensors.torch import load_file, save_file
    from transformers import BertConfig, BertModel

    from ragplug.errors import EncoderMismatchError
    from ragplug.retrievers.late_interaction import LateInteractionIndex

    vocab = len(json.loads((tokenizer_dir / "tokenizer.json").read_text())["model"]["vocab"])
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=vocab,
        hidden_size=256,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=1024,
        max_position_embeddings=128,
    )
    first, second = tmp_path / "first", tmp_path / "second"
    BertModel(config).eval().save_pretrained(first)
    for file in tokenizer_dir.iterdir():
        shutil.copy(file, first / file.name)
    shutil.copytree(first, second)
    weights = load_file(str(second / "model.safetensors"))
    assert (second / "model.safetensors").stat().st_size > 4 << 20
    weights["encoder.layer.0.attention.self.query.weight"] += 0.05  # bytes far from the file's head and tail
    save_file(weights, str(second / "model.safetensors"), metadata={"format": "pt"})
    a, b = ColBERTEncoder(first), ColBERTEncoder(second)
    assert a.identity.dim == b.identity.dim and a.identity.fingerprint != b.identity.fingerprint
    index = LateInteractionIndex(a)
    index.add(["marley was dead"], ids=["m"])
    index.save(tmp_path / "index")
    with pytest.raises(EncoderMismatchError, match="fingerprint"):
        LateInteractionIndex.load(tmp_path / "index", b)
    assert len(LateInteractionIndex.load(tmp_path / "index", a)) == 1


def test_pickle_only_checkpoint_is_refused(stanford_checkpoint: Path, tmp_path: Path) -> None:
    folder = tmp_path / "pickled"
    shutil.copytree(stanford_checkpoint, folder)
    (folder / "model.safetensors").rename(folder / "pytorch_model.bin")
    with pytest.raises(InvalidInputError, match="safetensors only"):
        ColBERTEncoder(folder)


def test_checkpoint_missing_encoder_weights_is_refused(plain_checkpoint: Path, tmp_path: Path) -> None:
    from safetensors.torch import load_file, save_file

    folder = tmp_path / "partial"
    shutil.copytree(plain_checkpoint, folder)
    tensors = load_file(str(folder / "model.safetensors"))
    save_file({k: v for k, v in tensors.items() if "layer.1." not in k}, str(folder / "model.safetensors"))
    with pytest.raises(InvalidInputError, match="missing"):
        ColBERTEncoder(folder)


def test_unknown_hub_id_offline_gives_clear_error() -> None:
    with pytest.raises(InvalidInputError, match="cannot find model 'nobody/no-such-colbert'"):
        ColBERTEncoder("nobody/no-such-colbert")


def test_not_a_checkpoint(tmp_path: Path) -> None:
    with pytest.raises(InvalidInputError, match=r"config\.json not found"):
        ColBERTEncoder(tmp_path)


def test_bad_arguments(stanford_checkpoint: Path, stanford_encoder: ColBERTEncoder) -> None:
    with pytest.raises(InvalidInputError, match="dtype"):
        ColBERTEncoder(stanford_checkpoint, dtype="float13")
    with pytest.raises(InvalidInputError, match="batch_size"):
        ColBERTEncoder(stanford_checkpoint, batch_size=0)
    with pytest.raises(InvalidInputError, match="non-empty"):
        stanford_encoder.encode_queries(["  "])
    with pytest.raises(InvalidInputError, match="not one string"):
        stanford_encoder.encode_documents("a string")  # type: ignore[arg-type]


def test_marker_missing_from_vocabulary(stanford_checkpoint: Path, tmp_path: Path) -> None:
    folder = tmp_path / "badmarker"
    shutil.copytree(stanford_checkpoint, folder)
    meta = json.loads((folder / "artifact.metadata").read_text())
    meta["query_token_id"] = "[NOT-A-TOKEN]"
    (folder / "artifact.metadata").write_text(json.dumps(meta))
    with pytest.raises(InvalidInputError, match="not in the tokenizer"):
        ColBERTEncoder(folder)


def test_bfloat16_dtype(stanford_checkpoint: Path) -> None:
    enc = ColBERTEncoder(stanford_checkpoint, dtype="bfloat16")
    (vec,) = enc.encode_documents(["marley was dead"])
    assert vec.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vec, axis=1), 1.0, atol=1e-3)


def test_chunker_windows_with_overlap(stanford_encoder: ColBERTEncoder) -> None:
    text = " ".join(f"word{i}" for i in range(60))
    chunks = stanford_encoder.chunker(chunk_tokens=20, overlap=5)(text)
    assert len(chunks) > 2
    for chunk in chunks:
        assert text[chunk.start : chunk.start + len(chunk.text)] == chunk.text
    n_tokens = [len(stanford_encoder.tokenizer(c.text, add_special_tokens=False)["input_ids"]) for c in chunks]
    assert max(n_tokens) <= 20
    assert chunks[0].text.split()[-1] in chunks[1].text  # overlap
    assert chunks[-1].text.endswith("word59")
    with pytest.raises(InvalidInputError):
        stanford_encoder.chunker(chunk_tokens=10, overlap=10)
