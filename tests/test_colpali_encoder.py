"""ColPali-family page encoders: tiny checkpoints of every family colpali-engine can build (ColQwen2, ColQwen2.5,
ColQwen3, ColQwen3.5, ColIdefics3, ColModernVBert, ColPali, ColGemma3, and a LoRA adapter) built locally load
through the same ``ColPaliEncoder(path)`` call a hub id takes, and encode pages and queries as colpali-engine
does. Not relevance: the weights are random.

ColQwen2.5-Omni is not encodable with colpali-engine 0.3.18 under transformers 5.24: its class cannot even be
constructed (``ColQwen2_5Omni(config)`` and ``from_pretrained`` both fail in transformers' thinker ``__init__``
with ``AttributeError: 'ColQwen2_5Omni' object has no attribute 'visual'``: colpali-engine's
``spatial_merge_size`` setter writes ``self.visual.config`` before the thinker has built its ``model.visual``;
and its ``__init__`` then reads ``self.model.config.hidden_size``, which a transformers 5 thinker config holds
only in ``text_config``). Its tiny checkpoint is therefore saved from transformers' thinker plus a projection
head, and the test checks that ragplug refuses it with that reason rather than a bare traceback.

ColModernVBert works at tiny sizes once the processor's ``image_seq_len`` matches the model: with the
processor's default (64, the real model's 512-pixel crops in 16-pixel patches shuffled by 4) against a tiny
tower the forward pass fails in transformers with ``ValueError: Image features and image tokens do not match,
tokens: 832, features: 52`` (13 crops of 64 placeholders, 13 crops of 4 features); that is a mismatched
checkpoint, not a limit of colpali-engine or transformers.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from ragplug.errors import EncoderMismatchError, InvalidInputError
from ragplug.retrievers.colpali import ColPaliEncoder, Family, default_dtype
from ragplug.retrievers.colpali.encoder import cpu_supports_bf16, read_checkpoint
from ragplug.retrievers.late_interaction import LateInteractionIndex
from tests.fixtures.tiny_colpali import drop_tensor, legacy_adapter, tiny_colpali_paths
from tests.fixtures.tiny_colpali_families import tiny_colpali_family_paths

FAMILIES = {
    "colqwen2": Family.COLQWEN2,
    "colidefics3": Family.COLIDEFICS3,
    "colqwen2_5": Family.COLQWEN2_5,
    "colpali": Family.COLPALI,  # saved without its tied generation head, which loading ties again
    "colqwen3": Family.COLQWEN3,
    "colqwen3_5": Family.COLQWEN3_5,
    "colgemma3": Family.COLGEMMA3,
    "colmodernvbert": Family.COLMODERNVBERT,
}
DIMS = {"colqwen3": 320}  # colpali-engine's ColQwen3 head; every other family's has 128 dimensions


@dataclass
class _Page:  # the shape of ragplug.retrievers.colpali.pages.Page: an image, its text, its metadata
    image: Image.Image
    text: str = ""
    metadata: dict[str, Any] | None = None


@pytest.fixture(scope="session")
def tiny_colpali() -> dict[str, Path]:
    return tiny_colpali_paths() | tiny_colpali_family_paths()


@pytest.fixture(scope="session")
def encoders(tiny_colpali: dict[str, Path]) -> dict[str, ColPaliEncoder]:
    return {name: ColPaliEncoder(tiny_colpali[name], device="cpu", dtype="float32") for name in FAMILIES}


@pytest.fixture(scope="session")
def pages() -> list[Image.Image]:
    rng = np.random.default_rng(0)
    sizes = [(120, 90), (60, 140), (200, 150)]  # (height, width): different sizes and aspect ratios
    return [Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)) for h, w in sizes]


def _reference(encoder: ColPaliEncoder, batch: Any) -> list[np.ndarray]:
    """colpali-engine's own forward pass on a processed batch, padding rows dropped."""
    with torch.inference_mode():
        out = encoder.model(**batch).float()
    mask = batch["attention_mask"].bool()
    return [out[i][mask[i]].numpy() for i in range(len(out))]


def test_import_stays_light() -> None:
    code = "import sys, ragplug.retrievers.colpali; print(' '.join(sorted(sys.modules)))"
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    loaded = set(run.stdout.split())
    assert not loaded & {"torch", "transformers", "colpali_engine", "PIL", "peft"}


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_pages_and_queries_encode_as_colpali_engine_does(
    name: str, encoders: dict[str, ColPaliEncoder], pages: list[Image.Image]
) -> None:
    enc, dim = encoders[name], DIMS.get(name, 128)
    assert enc.family is FAMILIES[name] and enc.dim == dim
    docs = enc.encode_documents(pages)
    expected = _reference(enc, enc.processor.process_images(pages))
    assert len(docs) == len(pages)
    for got, want in zip(docs, expected, strict=True):
        assert got.dtype == np.float32 and got.shape == want.shape and got.shape[1] == dim
        np.testing.assert_allclose(got, want, atol=1e-4)
        np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-4)
    queries = enc.encode_queries(["where is marley", "the ghost of christmas yet to come"])
    for got, want in zip(queries, _reference(enc, enc.processor.process_queries(["where is marley"])), strict=False):
        np.testing.assert_allclose(got, want, atol=1e-4)  # prompt + query + augmentation tokens; batched as alone
    assert [q.shape[1] for q in queries] == [dim, dim] and queries[1].shape[0] > queries[0].shape[0]
    assert all(np.isfinite(m).all() for m in docs + queries)


QUERIES = ["where is marley", "a", "the ghost of christmas yet to come and the spirits of the past"]


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_queries_encode_the_same_batched_as_alone(
    name: str, encoders: dict[str, ColPaliEncoder], monkeypatch: pytest.MonkeyPatch
) -> None:
    enc = encoders[name]
    alone = [enc.encode_queries([q])[0] for q in QUERIES]
    calls: list[int] = []  # the batch size of each forward pass
    forward = enc.model.forward

    def counted(**inputs: Any) -> torch.Tensor:
        calls.append(len(inputs["input_ids"]))
        return forward(**inputs)

    monkeypatch.setattr(enc.model, "forward", counted)
    batched = enc.encode_queries(QUERIES)
    assert calls == ([len(QUERIES)] if enc.family.pads_queries else [1] * len(QUERIES))  # one padded batch
    for a, b in zip(batched, alone, strict=True):
        assert a.shape == b.shape
        np.testing.assert_allclose(a, b, atol=1e-4)


def test_colpali_queries_stay_one_at_a_time_while_sdpa_drops_their_causal_mask(
    tiny_colpali: dict[str, Path], encoders: dict[str, ColPaliEncoder]
) -> None:
    """Why ``Family.COLPALI.pads_queries`` is false: under SDPA a padded batch (causal mask) and a query alone
    (no mask, non-causal attention) disagree; under eager attention they agree. When this fails, transformers
    has made them agree, and ColPali queries can be batched as the other families' are."""
    sdpa = encoders["colpali"]
    eager = ColPaliEncoder(tiny_colpali["colpali"], device="cpu", dtype="float32")
    eager.model.set_attn_implementation("eager")
    for enc, agree in ((sdpa, False), (eager, True)):
        padded = _reference(enc, enc.processor.process_queries(QUERIES[:2]))
        alone = [_reference(enc, enc.processor.process_queries([q]))[0] for q in QUERIES[:2]]
        worst = max(float(np.abs(a - b).max()) for a, b in zip(padded, alone, strict=True))
        assert (worst < 1e-4) is agree, f"{enc.model.config._attn_implementation}: {worst}"


def test_page_objects_and_input_order(encoders: dict[str, ColPaliEncoder], pages: list[Image.Image]) -> None:
    enc = encoders["colidefics3"]
    plain = enc.encode_documents(pages)
    wrapped = enc.encode_documents([_Page(p, text="page text") for p in reversed(pages)])
    for a, b in zip(plain, reversed(wrapped), strict=True):
        np.testing.assert_allclose(a, b, atol=1e-4)
    assert enc.encode_documents([]) == [] and enc.encode_queries([]) == []
    gray = enc.encode_documents([pages[0].convert("L")])[0]  # any mode is converted to RGB first
    assert gray.shape[1] == 128 and np.isfinite(gray).all()


def test_pages_of_the_pages_module_encode(encoders: dict[str, ColPaliEncoder], pages: list[Image.Image]) -> None:
    pages_module = pytest.importorskip("ragplug.retrievers.colpali.pages")
    enc = encoders["colqwen2"]
    wrapped = [pages_module.Page(id=f"p{i}", image=p, text="", metadata={"page": i}) for i, p in enumerate(pages)]
    for a, b in zip(enc.encode_documents(pages), enc.encode_documents(iter(wrapped)), strict=True):
        np.testing.assert_allclose(a, b, atol=1e-4)
    with pytest.raises(InvalidInputError, match="pass a list of pages"):
        enc.encode_documents(pages[0])


def test_pooling_reduces_pages_by_about_the_factor(
    tiny_colpali: dict[str, Path], encoders: dict[str, ColPaliEncoder], pages: list[Image.Image]
) -> None:
    plain = encoders["colidefics3"]
    pooled_enc = ColPaliEncoder(tiny_colpali["colidefics3"], device="cpu", dtype="float32", pool_factor=3)
    full, pooled = plain.encode_documents(pages), pooled_enc.encode_documents(pages)
    for f, p in zip(full, pooled, strict=True):
        assert 0.6 * (len(f) // 3) <= len(p) <= len(f) // 3
        np.testing.assert_allclose(np.linalg.norm(p, axis=1), 1.0, atol=1e-4)
    query = "marley was dead"  # queries are never pooled
    np.testing.assert_allclose(pooled_enc.encode_queries([query])[0], plain.encode_queries([query])[0], atol=1e-5)
    assert pooled_enc.identity.settings["pool_factor"] == 3 and plain.identity.settings["pool_factor"] is None
    assert pooled_enc.identity.dim == plain.identity.dim
    assert pooled_enc.identity.fingerprint != plain.identity.fingerprint
    assert ColPaliEncoder(tiny_colpali["colidefics3"], dtype="float32", pool_factor=1).identity == plain.identity


@pytest.mark.parametrize("family", ["colidefics3", "colqwen2", "colpali"])
def test_the_single_linkage_pooler_keeps_the_page_prompt_and_is_remembered(
    family: str,
    tiny_colpali: dict[str, Path],
    encoders: dict[str, ColPaliEncoder],
    pages: list[Image.Image],
    tmp_path: Path,
) -> None:
    plain = encoders[family]
    enc = ColPaliEncoder(tiny_colpali[family], dtype="float32", pool_factor=3, pooler="single")
    batch = plain.processor.process_images(pages[:1])
    prompt = plain._prompt_rows(batch)
    assert prompt is not None and 0 < prompt[0].sum() < len(prompt[0])  # some text rows, mostly patches
    full, pooled = plain.encode_documents(pages[:1])[0], enc.encode_documents(pages[:1])[0]
    assert len(pooled) == max(len(full) // 3, int(prompt[0].sum()) + 1)
    np.testing.assert_allclose(np.linalg.norm(pooled, axis=1), 1.0, atol=1e-4)
    for row in full[prompt[0]]:  # every prompt row is kept as it was
        assert np.abs(pooled - row).max(axis=1).min() < 1e-6
    assert enc.identity.settings["pooler"] == "single"
    ward = ColPaliEncoder(tiny_colpali[family], dtype="float32", pool_factor=3)
    assert "pooler" not in ward.identity.settings and ward.identity.fingerprint != enc.identity.fingerprint
    index = LateInteractionIndex(enc)
    index.add(pages[:2], ids=["a", "b"])
    index.save(tmp_path / "pages")
    reopened = LateInteractionIndex.open(tmp_path / "pages")
    assert isinstance(reopened.encoder, ColPaliEncoder) and reopened.encoder.pooler == "single"
    with pytest.raises(EncoderMismatchError, match="pooler"):
        LateInteractionIndex.load(tmp_path / "pages", ward)
    with pytest.raises(InvalidInputError, match="unknown pooler"):
        ColPaliEncoder(tiny_colpali[family], dtype="float32", pooler="kmeans")


def test_identity_and_family_come_from_the_files(
    tiny_colpali: dict[str, Path], encoders: dict[str, ColPaliEncoder], tmp_path: Path
) -> None:
    enc = encoders["colqwen2"]
    settings = dict(enc.identity.settings)
    assert settings == {
        "encoder": "colpali",
        "model": str(tiny_colpali["colqwen2"].resolve()),
        "family": "ColQwen2",
        "pool_factor": None,
        "dtype": "float32",  # recorded to reopen as built, not fingerprinted: a bf16 twin matches
    }
    assert ColPaliEncoder(tiny_colpali["colqwen2"], dtype="bfloat16").identity.fingerprint == enc.identity.fingerprint
    assert len(enc.identity.fingerprint) == 16 and enc.identity.name == str(tiny_colpali["colqwen2"])
    assert enc.identity.fingerprint != encoders["colidefics3"].identity.fingerprint
    liar = shutil.copytree(tiny_colpali["colqwen2"], tmp_path / "colidefics3")  # a folder named for another family
    moved = ColPaliEncoder(liar, dtype="float32")
    assert moved.family is Family.COLQWEN2
    assert moved.identity.fingerprint == enc.identity.fingerprint  # the same files, wherever they are
    config = json.loads((liar / "config.json").read_text())
    config["text_config"]["rms_norm_eps"] = 1e-5  # another config: another model
    (liar / "config.json").write_text(json.dumps(config))
    assert ColPaliEncoder(liar, dtype="float32").identity.fingerprint != enc.identity.fingerprint


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_the_family_comes_from_the_checkpoint_not_its_folder_name(
    name: str, tiny_colpali: dict[str, Path], tmp_path: Path
) -> None:
    other = "colqwen2" if FAMILIES[name] is not Family.COLQWEN2 else "colpali"
    liar = shutil.copytree(tiny_colpali[name], tmp_path / other / "colsmol")  # named for two other families
    assert read_checkpoint(liar).family is FAMILIES[name]


def test_colqwen2_5_omni_is_refused_while_colpali_engine_cannot_build_it(tiny_colpali: dict[str, Path]) -> None:
    folder = tiny_colpali["colqwen2_5_omni"]  # see the module docstring for the colpali-engine fault
    assert read_checkpoint(folder).family is Family.COLQWEN2_5_OMNI
    match = r"cannot build its ColQwen2_5Omni model under transformers .*no attribute 'visual'.*pair that builds it"
    with pytest.raises(InvalidInputError, match=match):
        ColPaliEncoder(folder, device="cpu", dtype="float32")


ALL_FAMILIES = [
    ({"architectures": ["ColPali"], "model_type": "paligemma"}, Family.COLPALI),
    ({"architectures": ["ColQwen2"], "model_type": "qwen2_vl"}, Family.COLQWEN2),
    ({"architectures": ["ColQwen2_5"], "model_type": "qwen2_5_vl"}, Family.COLQWEN2_5),
    ({"architectures": ["ColQwen2_5Omni"], "model_type": "qwen2_5_omni_thinker"}, Family.COLQWEN2_5_OMNI),
    ({"architectures": ["ColQwen3"], "model_type": "qwen3_vl"}, Family.COLQWEN3),
    ({"architectures": ["ColQwen3_5"], "model_type": "qwen3_5"}, Family.COLQWEN3_5),
    ({"architectures": ["ColIdefics3"], "model_type": "idefics3"}, Family.COLIDEFICS3),
    ({"architectures": ["ColModernVBert"], "model_type": "modernvbert"}, Family.COLMODERNVBERT),
    ({"architectures": ["ColGemma3"], "model_type": "gemma3"}, Family.COLGEMMA3),
    ({"model_type": "qwen2_5_vl"}, Family.COLQWEN2_5),  # no architectures: the model type decides
    ({"architectures": ["Qwen2VLForConditionalGeneration"], "model_type": "qwen2_vl"}, Family.COLQWEN2),
]


@pytest.mark.parametrize(("config", "family"), ALL_FAMILIES)
def test_every_colpali_engine_family_is_read_from_its_config(config: dict[str, Any], family: Family) -> None:
    import colpali_engine.models as engine

    assert Family.of_config(config, Path("ckpt")) is family
    assert hasattr(engine, family.model_class) and hasattr(engine, family.processor_class)


@pytest.mark.parametrize(
    ("config", "match"),
    [
        ({"architectures": ["BiQwen2"], "model_type": "qwen2_vl"}, "single-vector"),
        ({"architectures": ["BiPaliProj"], "model_type": "paligemma"}, "single-vector"),
        ({"architectures": ["BertModel"], "model_type": "bert"}, "not a ColPali-family checkpoint"),
        ({"architectures": ["ColQwen2"], "model_type": "idefics3"}, "model_type 'idefics3'"),
    ],
)
def test_configs_that_are_not_page_encoders_are_refused(config: dict[str, Any], match: str) -> None:
    with pytest.raises(InvalidInputError, match=match):
        Family.of_config(config, Path("ckpt"))


@pytest.mark.parametrize(("name", "head"), [("colqwen2", "custom_text_proj"), ("colidefics3", "linear")])
def test_a_checkpoint_without_its_projection_is_refused(
    name: str, head: str, tiny_colpali: dict[str, Path], tmp_path: Path
) -> None:
    broken = shutil.copytree(tiny_colpali[name], tmp_path / name)
    assert drop_tensor(broken, f"{head}.weight")
    with pytest.raises(InvalidInputError, match=rf"projection head .*{head}\.weight.*random"):
        ColPaliEncoder(broken, dtype="float32")


def test_missing_folders_and_other_files_are_refused(tiny_colpali: dict[str, Path], tmp_path: Path) -> None:
    with pytest.raises(InvalidInputError, match="no such folder"):
        ColPaliEncoder(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(InvalidInputError, match="holds no model"):
        ColPaliEncoder(tmp_path / "empty")
    pickled = shutil.copytree(tiny_colpali["colqwen2"], tmp_path / "pickled")
    (pickled / "model.safetensors").rename(pickled / "pytorch_model.bin")
    with pytest.raises(InvalidInputError, match="pickled"):
        ColPaliEncoder(pickled)


def test_an_adapter_loads_onto_its_base_and_is_checked(
    tiny_colpali: dict[str, Path], encoders: dict[str, ColPaliEncoder], pages: list[Image.Image], tmp_path: Path
) -> None:
    adapter = ColPaliEncoder(tiny_colpali["adapter"], dtype="float32")
    assert adapter.family is Family.COLQWEN2
    assert adapter.identity.settings["base_model"] == str(tiny_colpali["colqwen2"])
    assert adapter.identity.fingerprint != encoders["colqwen2"].identity.fingerprint
    tuned, base = adapter.encode_documents(pages[:1])[0], encoders["colqwen2"].encode_documents(pages[:1])[0]
    assert tuned.shape == base.shape and np.abs(tuned - base).max() > 1e-2  # the adapter changes the vectors

    legacy = ColPaliEncoder(legacy_adapter(tiny_colpali["adapter"], tmp_path / "legacy"), dtype="float32")
    np.testing.assert_allclose(legacy.encode_documents(pages[:1])[0], tuned, atol=1e-5)  # old names map

    broken = shutil.copytree(tiny_colpali["adapter"], tmp_path / "adapter")
    assert drop_tensor(broken, "custom_text_proj", "adapter_model.safetensors")
    with pytest.raises(InvalidInputError, match=r"projection head \(custom_text_proj\)"):
        ColPaliEncoder(broken, dtype="float32")
    config = json.loads((broken / "adapter_config.json").read_text())
    config["base_model_name_or_path"] = str(tmp_path / "gone")
    (broken / "adapter_config.json").write_text(json.dumps(config))
    with pytest.raises(InvalidInputError, match=r"is for the base model .*gone.*no such folder"):
        ColPaliEncoder(broken)


def test_nan_and_inf_embeddings_are_refused_naming_the_item(
    encoders: dict[str, ColPaliEncoder], pages: list[Image.Image], monkeypatch: pytest.MonkeyPatch
) -> None:
    enc = encoders["colqwen2"]
    row_of_page_1 = enc._batch_order(pages)[0].index(1)
    forward = enc.model.forward

    def poisoned(*args: Any, **kwargs: Any) -> torch.Tensor:
        out = forward(*args, **kwargs).clone()
        is_page = "pixel_values" in kwargs
        out[row_of_page_1 if is_page else 0, -1, 0] = float("nan" if is_page else "inf")
        return out

    monkeypatch.setattr(enc.model, "forward", poisoned)
    with pytest.raises(InvalidInputError, match="page 1 encoded to NaN or infinite"):
        enc.encode_documents(pages)
    with pytest.raises(InvalidInputError, match="query 0 encoded to NaN or infinite"):
        enc.encode_queries(["marley", "scrooge"])


def test_bad_arguments_are_refused(tiny_colpali: dict[str, Path], encoders: dict[str, ColPaliEncoder]) -> None:
    folder = tiny_colpali["colidefics3"]
    for kwargs, match in [
        ({"batch_size": 0}, "batch_size"),
        ({"pool_factor": -2}, "pool_factor"),
        ({"pool_factor": 2.5}, "pool_factor"),
        ({"query_threads": True}, "query_threads"),
        ({"max_visual_tokens": 0}, "max_visual_tokens must be a positive integer or None, got 0"),
        ({"max_visual_tokens": 2.5}, "max_visual_tokens"),
        ({"max_visual_tokens": True}, "max_visual_tokens"),
        ({"dtype": "int8"}, "dtype"),
        ({"dtype": "float64x"}, "dtype"),
    ]:
        with pytest.raises(InvalidInputError, match=match):
            ColPaliEncoder(folder, **kwargs)
    enc = encoders["colidefics3"]
    with pytest.raises(InvalidInputError, match="not one string"):
        enc.encode_queries("marley")
    with pytest.raises(InvalidInputError, match="query 1 must be a non-empty string"):
        enc.encode_queries(["marley", "  "])
    with pytest.raises(InvalidInputError, match=r"page 0 must be a PIL image .*a file name"):
        enc.encode_documents(["page.png"])
    with pytest.raises(InvalidInputError, match="page 1 must be a PIL image"):
        enc.encode_documents([Image.new("RGB", (8, 8)), _Page(image=None)])  # type: ignore[arg-type]
    with pytest.raises(InvalidInputError, match="empty image"):
        enc.encode_documents([Image.new("RGB", (0, 5))])


def _image_tokens(enc: ColPaliEncoder, page: Image.Image) -> tuple[int, int]:
    """How many image tokens, and how many tokens in all, the encoder's processor makes of a page."""
    batch = enc.processor.process_images([page])
    ids = batch["input_ids"][batch["attention_mask"].bool()]
    return int((ids == enc.model.config.image_token_id).sum()), len(ids)


@pytest.fixture(scope="session")
def large_pages() -> list[Image.Image]:
    rng = np.random.default_rng(1)
    return [Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)) for h, w in [(1100, 850), (700, 700)]]


@pytest.mark.parametrize(
    ("name", "cap"),
    [
        ("colqwen2", 6),
        ("colqwen2_5", 6),
        ("colqwen3", 6),
        ("colqwen3_5", 6),
        ("colidefics3", 12),  # crops of 4 tokens: 12 leaves the page alone (2x2 crops + the page would be 20)
        ("colmodernvbert", 12),
    ],
)
def test_max_visual_tokens_caps_the_image_tokens_of_a_large_page(
    name: str,
    cap: int,
    tiny_colpali: dict[str, Path],
    encoders: dict[str, ColPaliEncoder],
    large_pages: list[Image.Image],
) -> None:
    plain = encoders[name]
    capped = ColPaliEncoder(tiny_colpali[name], device="cpu", dtype="float32", max_visual_tokens=cap)
    docs = capped.encode_documents(large_pages)
    expected = _reference(capped, capped.processor.process_images(large_pages))
    for page, doc, want in zip(large_pages, docs, expected, strict=True):
        image_tokens, tokens = _image_tokens(capped, page)
        assert image_tokens <= cap < _image_tokens(plain, page)[0]  # Qwen: fewer pixels; Idefics3: fewer crops
        assert len(doc) == tokens  # every position kept, before pooling: the page's and its prompt's
        np.testing.assert_allclose(doc, want, atol=1e-4)
    assert capped.max_visual_tokens == cap and capped.identity.settings["max_visual_tokens"] == cap
    assert capped.identity.fingerprint != plain.identity.fingerprint  # other page vectors: another encoder
    roomy = ColPaliEncoder(tiny_colpali[name], device="cpu", dtype="float32", max_visual_tokens=1000)
    assert roomy.max_visual_tokens is None and roomy.identity == plain.identity  # a cap above the checkpoint's


@pytest.mark.parametrize(
    ("name", "cap", "least"),
    [("colpali", 15, 16), ("colgemma3", 3, 4), ("colidefics3", 3, 4), ("colmodernvbert", 1, 4)],
)
def test_a_cap_below_what_every_page_takes_is_refused(
    name: str, cap: int, least: int, tiny_colpali: dict[str, Path], encoders: dict[str, ColPaliEncoder]
) -> None:
    with pytest.raises(InvalidInputError, match=rf"max_visual_tokens={cap} is below the {least} image tokens"):
        ColPaliEncoder(tiny_colpali[name], device="cpu", dtype="float32", max_visual_tokens=cap)
    at_least = ColPaliEncoder(tiny_colpali[name], device="cpu", dtype="float32", max_visual_tokens=least)
    assert at_least.encode_documents([Image.new("RGB", (850, 1100))])[0].shape[1] == at_least.dim
    if FAMILIES[name].sizing == "fixed":  # every page is one fixed-size image: a cap it meets changes nothing
        assert at_least.identity == encoders[name].identity


def test_an_index_remembers_the_cap_it_was_built_with(
    tiny_colpali: dict[str, Path],
    encoders: dict[str, ColPaliEncoder],
    large_pages: list[Image.Image],
    tmp_path: Path,
) -> None:
    enc = ColPaliEncoder(tiny_colpali["colqwen2"], dtype="float32", max_visual_tokens=6)
    index = LateInteractionIndex(enc)
    index.add(large_pages, ids=["letter", "square"])
    index.save(tmp_path / "pages")
    # the recorded cap rebuilds the encoder; an encoder without it is refused
    reopened = LateInteractionIndex.open(tmp_path / "pages")
    assert isinstance(reopened.encoder, ColPaliEncoder) and reopened.encoder.identity == enc.identity
    assert reopened.encoder.max_visual_tokens == 6
    reopened.add(large_pages[:1], ids=["again"])
    assert len(reopened) == 3
    with pytest.raises(EncoderMismatchError, match="max_visual_tokens: 6 != 'unset'"):
        LateInteractionIndex.load(tmp_path / "pages", encoders["colqwen2"])


def test_dtype_is_bfloat16_where_the_cpu_computes_it(tmp_path: Path, tiny_colpali: dict[str, Path]) -> None:
    cpuinfo = tmp_path / "cpuinfo"
    for flags, native in [("fpu avx2 avx512f", False), ("fpu avx512f avx512_bf16", True), ("amx_bf16 amx_tile", True)]:
        cpuinfo.write_text(f"processor\t: 0\nflags\t\t: {flags}\n\nprocessor\t: 1\nflags\t\t: {flags}\n")
        assert cpu_supports_bf16(cpuinfo) is native
    assert cpu_supports_bf16(tmp_path / "missing") is False
    assert default_dtype("cpu") == ("bfloat16" if cpu_supports_bf16() else "float32")
    assert default_dtype("mps") == "float32"
    enc = ColPaliEncoder(tiny_colpali["colidefics3"], device="cpu")
    assert enc.dtype == getattr(torch, default_dtype("cpu"))
    assert np.isfinite(enc.encode_queries(["marley"])[0]).all()


def test_index_adds_searches_and_reopens_with_the_colpali_encoder(
    tiny_colpali: dict[str, Path], pages: list[Image.Image], tmp_path: Path
) -> None:
    enc = ColPaliEncoder(tiny_colpali["colqwen2"], dtype="float32", pool_factor=2)
    index = LateInteractionIndex(enc)
    ids = index.add(pages, ids=["p1", "p2", "p3"], metadatas=[{"page": n} for n in (1, 2, 3)])
    assert ids == ["p1", "p2", "p3"] and len(index) == 3
    hits = index.search("where is marley", k=2)
    assert len(hits) == 2 and {h.id for h in hits} <= set(ids) and hits[0].score >= hits[1].score
    assert hits[0].metadata["page"] in (1, 2, 3) and hits[0].text is None
    index.save(tmp_path / "pages")

    reopened = LateInteractionIndex.open(tmp_path / "pages", dtype="float32")
    assert isinstance(reopened.encoder, ColPaliEncoder) and reopened.encoder.pool_factor == 2
    assert reopened.encoder.identity.fingerprint == enc.identity.fingerprint
    again = reopened.search("where is marley", k=2)
    assert [h.id for h in again] == [h.id for h in hits]
    np.testing.assert_allclose([h.score for h in again], [h.score for h in hits], atol=1e-4)

    unpooled = ColPaliEncoder(tiny_colpali["colqwen2"], dtype="float32")
    with pytest.raises(EncoderMismatchError, match="pool_factor: 2 != None"):
        LateInteractionIndex.load(tmp_path / "pages", unpooled)
