"""Incremental detokenization: a few tokens decoded per step give the text of one decode of everything."""

from __future__ import annotations

import itertools
from pathlib import Path
from types import SimpleNamespace

import pytest

from ragplug.adapters.lora import GenerationRequest
from ragplug.adapters.lora.decoding import Decoder, Row

TEXT = "Scrooge said — ‘Bah! Humbug!’ café naïve 你好 😀 end.\nMarley was dead: to begin with."


def _metaspace_tokenizer(folder: Path):
    """A SentencePiece-style tokenizer (``▁`` for spaces, the leading one dropped when decoding)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>", byte_fallback=True))
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.decoder = decoders.Sequence([decoders.ByteFallback(), decoders.Metaspace()])
    byte_tokens = [f"<0x{b:02X}>" for b in range(256)]
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=["<unk>", *byte_tokens])
    tok.train_from_iterator(["Marley was dead to begin with", "Scrooge said Bah Humbug"] * 20, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>")
    fast.save_pretrained(folder)
    return fast


def _stream(tokenizer, ids: list[int]) -> tuple[str, list[str]]:
    decoder = SimpleNamespace(tokenizer=tokenizer)
    row = Row(GenerationRequest([1]), None)
    texts = []
    for token in ids:
        row.visible.append(token)
        Decoder.extend_text(decoder, row)  # type: ignore[arg-type]
        texts.append(row.text)
    Decoder.extend_text(decoder, row, final=True)  # type: ignore[arg-type]
    return row.text, texts


@pytest.mark.parametrize("kind", ["byte-level BPE", "SentencePiece-style"])
def test_incremental_text_equals_one_decode(kind: str, tiny_llm: dict[str, Path], tmp_path: Path) -> None:
    from transformers import AutoTokenizer

    if kind == "byte-level BPE":
        tokenizer = AutoTokenizer.from_pretrained(tiny_llm["base"])
    else:
        tokenizer = _metaspace_tokenizer(tmp_path)
    ids = tokenizer.encode(TEXT, add_special_tokens=False)
    # multi-byte characters are split over several tokens, each an incomplete character on its own
    assert any("\ufffd" in tokenizer.decode([token]) for token in ids)
    final, texts = _stream(tokenizer, ids)
    assert final == tokenizer.decode(ids, skip_special_tokens=False)
    assert "😀" in final and "你好" in final
    for shorter, longer in itertools.pairwise(texts):
        assert longer.startswith(shorter)  # text only grows; nothing already shown changes
        assert "\ufffd" not in longer  # half characters are held back


def test_a_trailing_incomplete_character_is_kept_at_the_end(tiny_llm: dict[str, Path]) -> None:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_llm["base"])
    ids = tokenizer.encode("ok 😀", add_special_tokens=False)[:-1]  # cut inside the emoji's bytes
    final, texts = _stream(tokenizer, ids)
    assert texts[-1] == "ok "
    assert final == tokenizer.decode(ids) and final.endswith("\ufffd")
