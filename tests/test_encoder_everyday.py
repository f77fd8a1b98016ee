"""The ColBERT encoder in everyday use: progress when work is long, quiet loads, errors that point at the fix."""

from __future__ import annotations

import io
import logging
import shutil
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from ragplug import _progress
from ragplug._progress import PROGRESS_THRESHOLD, format_bytes, summary, wants_progress
from ragplug.errors import InvalidInputError
from ragplug.retrievers.colbert import ColBERTEncoder
from ragplug.retrievers.colbert.checkpoint import looks_like_path, resolve_checkpoint

WORDS = ["marley", "was", "dead", "to", "begin", "with", "there", "is", "no", "doubt", "about", "that", "scrooge"]


def _texts(n: int, seed: int = 0) -> list[str]:
    """``n`` texts of very different lengths (1 to 60 words), in random order."""
    rng = np.random.default_rng(seed)
    return [" ".join(rng.choice(WORDS, size=int(rng.integers(1, 60)))) for _ in range(n)]


@pytest.fixture
def transformers_log() -> Iterator[io.StringIO]:
    """Everything transformers logs at WARNING and above (its logger does not propagate to caplog's)."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setLevel(logging.WARNING)
    logger = logging.getLogger("transformers")
    logger.addHandler(handler)
    yield stream
    logger.removeHandler(handler)


# -- progress ---------------------------------------------------------------------------------------------
def test_wants_progress_threshold() -> None:
    assert not wants_progress(None, PROGRESS_THRESHOLD)
    assert wants_progress(None, PROGRESS_THRESHOLD + 1)
    assert wants_progress(True, 1) and not wants_progress(False, 10 * PROGRESS_THRESHOLD)
    with pytest.raises(InvalidInputError, match="show_progress"):
        wants_progress(1, 10)  # type: ignore[arg-type]


def test_summary_line() -> None:
    line = summary(1200, 3400, 410_000, 61.2, 52_300_000)
    assert line == "indexed 1,200 items (3,400 chunks, 410,000 vectors, 52.3 MB) in 61.2 s (19.6 items/s)"
    assert summary(1, 1, 1, 0.0, 512) == "indexed 1 item (1 chunk, 1 vector, 512 B) in 0.0 s"
    assert [format_bytes(n) for n in (999, 1000, 2.5e9, 3e12)] == ["999 B", "1.0 kB", "2.5 GB", "3.0 TB"]


def test_progress_on_by_default_for_long_work_counting_documents(
    stanford_encoder: ColBERTEncoder, capfd: pytest.CaptureFixture[str]
) -> None:
    texts = _texts(PROGRESS_THRESHOLD + 1)
    stanford_encoder.encode_documents(texts)
    err = capfd.readouterr().err
    assert f"{len(texts)}/{len(texts)}" in err  # counts documents, not batches
    assert "doc/s" in err


def test_progress_off_by_default_for_short_work_and_forced(
    stanford_encoder: ColBERTEncoder, capfd: pytest.CaptureFixture[str]
) -> None:
    stanford_encoder.encode_documents(_texts(20))
    assert capfd.readouterr().err == ""
    stanford_encoder.encode_documents(_texts(20), show_progress=True)
    assert "20/20" in capfd.readouterr().err
    stanford_encoder.encode_documents(_texts(PROGRESS_THRESHOLD + 1), show_progress=False)
    assert capfd.readouterr().err == ""
    stanford_encoder.encode_queries(_texts(PROGRESS_THRESHOLD + 1))  # queries never show a bar
    assert capfd.readouterr().err == ""


def test_batch_order_is_representative_and_outputs_in_input_order(stanford_checkpoint: Path) -> None:
    enc = ColBERTEncoder(stanford_checkpoint, device="cpu", batch_size=8)
    texts = _texts(2000, seed=1)
    batches = enc._batch_order(texts)
    lengths = np.array([len(t) for t in texts])
    assert sorted(i for b in batches for i in b) == list(range(len(texts)))  # every text once
    assert all(len(b) == 8 for b in batches)
    spans = [np.ptp(lengths[b]) for b in batches]
    assert np.mean(spans) < 0.05 * np.ptp(lengths)  # batches of similar lengths: little padding
    assert lengths[batches[0]].max() == lengths.max()  # the largest batch first: out of memory fails at once
    done = np.cumsum([lengths[b].sum() for b in batches]) / lengths.sum()  # share of the work done
    expected = np.cumsum([len(b) for b in batches]) / len(texts)  # share of the bar done
    assert np.abs(done - expected)[len(batches) // 10 :].max() < 0.08  # the pace, hence the ETA, is honest
    assert batches == enc._batch_order(texts)  # deterministic
    texts = texts[:64]
    together = enc.encode_documents(texts)
    for i in (0, 17, 63):
        (alone,) = enc.encode_documents([texts[i]])
        np.testing.assert_allclose(together[i], alone, atol=1e-5)


# -- quiet loads ------------------------------------------------------------------------------------------
def test_model_load_prints_no_weight_bars_and_restores_transformers(
    stanford_checkpoint: Path, capfd: pytest.CaptureFixture[str], transformers_log: io.StringIO
) -> None:
    from transformers.utils import logging as hf_logging

    hook_before = hf_logging._tqdm_hook
    enabled_before = hf_logging.is_progress_bar_enabled()
    ColBERTEncoder(stanford_checkpoint, device="cpu")
    out, err = capfd.readouterr()
    assert "Loading weights" not in out + err and err == ""
    assert transformers_log.getvalue() == ""  # no load report: ragplug loads the ColBERT head itself
    assert hf_logging._tqdm_hook is hook_before and hf_logging.is_progress_bar_enabled() == enabled_before
    # outside ragplug's load, transformers' bars are back (the global state was not changed for good)
    from transformers import AutoModel

    AutoModel.from_pretrained(str(stanford_checkpoint))
    if enabled_before:
        assert "Loading weights" in capfd.readouterr().err


def test_quiet_transformers_restores_after_an_error() -> None:
    from transformers.utils import logging as hf_logging

    before = hf_logging._tqdm_hook
    with pytest.raises(RuntimeError), _progress.quiet_transformers():
        assert hf_logging._tqdm_hook is not before
        raise RuntimeError
    assert hf_logging._tqdm_hook is before


def test_chunker_does_not_warn_about_long_texts(stanford_checkpoint: Path, transformers_log: io.StringIO) -> None:
    enc = ColBERTEncoder(stanford_checkpoint, device="cpu")  # a fresh tokenizer: transformers warns once each
    long_text = " ".join(WORDS * 40)
    assert len(enc.tokenizer(long_text, verbose=False)["input_ids"]) > enc.tokenizer.model_max_length
    chunks = enc.chunker()(long_text)
    assert len(chunks) > 1
    assert transformers_log.getvalue() == ""
    enc.encode_documents([long_text])  # truncated to doc_maxlen: no warning either
    assert transformers_log.getvalue() == ""
    fresh = ColBERTEncoder(stanford_checkpoint, device="cpu")
    fresh.tokenizer(long_text)  # the control: transformers' own call does warn, so the test can see it
    assert "Token indices sequence length is longer" in transformers_log.getvalue()


# -- errors that point at the fix -------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("name", "is_path"),
    [
        ("./models/colbrt", True),
        ("~/x", True),
        ("/abs/path", True),
        ("models\\colbert", True),
        ("C:/models", True),
        ("a/b/c", True),
        (".hidden", True),
        ("answerdotai/answerai-colbert-small-v1", False),
        ("bert-base-uncased", False),
    ],
)
def test_looks_like_path(name: str, is_path: bool) -> None:
    assert looks_like_path(name) is is_path


def test_misspelled_folder_names_the_closest_sibling(
    stanford_checkpoint: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    shutil.copytree(stanford_checkpoint, tmp_path / "models" / "colbert")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(InvalidInputError, match=r"^no such folder \./models/colbrt .*closest: 'colbert'") as err:
        ColBERTEncoder("./models/colbrt")
    assert "hub" not in str(err.value) and "repo" not in str(err.value)
    with pytest.raises(InvalidInputError, match=r"no such folder \./modls/colbert .*has no 'modls'; closest: 'models'"):
        ColBERTEncoder("./modls/colbert")
    with pytest.raises(InvalidInputError, match=r"^no such folder /no-such-root-ragplug/x"):
        resolve_checkpoint("/no-such-root-ragplug/x")
    with pytest.raises(InvalidInputError, match=r"^no such folder ~/no-such-ragplug-model"):
        resolve_checkpoint("~/no-such-ragplug-model")
    with pytest.raises(InvalidInputError, match=r"^no such folder models\\colbert .*backslash"):
        resolve_checkpoint("models\\colbert")
    with pytest.raises(InvalidInputError, match=r"^no such folder"):
        resolve_checkpoint(tmp_path / "models" / "nothing")  # a Path is always a path
    assert ColBERTEncoder("./models/colbert", device="cpu").dim == 16


def test_hub_ids_still_go_to_the_hub(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "models" / "colbert").mkdir(parents=True)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(InvalidInputError, match="cannot find model 'nobody/no-such-colbert'"):
        resolve_checkpoint("nobody/no-such-colbert")
    # one slash is a valid hub id; when its first part is a local folder the local reading is named too
    with pytest.raises(InvalidInputError, match=r"cannot find model 'models/colbrt'.*closest: 'colbert'"):
        resolve_checkpoint("models/colbrt")


def test_folder_without_a_model_says_what_it_holds(stanford_checkpoint: Path, tmp_path: Path) -> None:
    folder = tmp_path / "docs"
    folder.mkdir()
    (folder / "notes.txt").write_text("hi")
    (folder / "sub").mkdir()
    with pytest.raises(
        InvalidInputError,
        match=r"docs holds no model: config\.json not found and no \*\.safetensors weights; it holds notes\.txt, sub/$",
    ):
        ColBERTEncoder(folder)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(InvalidInputError, match=r"holds no model.*it is empty"):
        ColBERTEncoder(empty)
    shutil.copytree(stanford_checkpoint, folder / "colbert")
    with pytest.raises(InvalidInputError, match=r"A model is in the subfolder .*docs/colbert"):
        ColBERTEncoder(folder)


def test_config_without_weights_is_named(plain_checkpoint: Path, tmp_path: Path) -> None:
    folder = tmp_path / "noweights"
    shutil.copytree(plain_checkpoint, folder)
    (folder / "model.safetensors").unlink()
    with pytest.raises(InvalidInputError, match=r"has a config\.json but no model weights.*config\.json"):
        ColBERTEncoder(folder)
    (folder / "pytorch_model.bin").write_bytes(b"pickle")
    with pytest.raises(InvalidInputError, match="safetensors only"):
        ColBERTEncoder(folder)
