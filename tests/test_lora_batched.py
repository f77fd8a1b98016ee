"""Segmented mixed-adapter LoRA: the same numbers as peft's ``adapter_names`` loop, from stacked weights."""

from __future__ import annotations

from pathlib import Path

import pytest

from ragplug.adapters.lora import GenerationConfig, GenerationRequest, LoadConfig, LoRAModel
from ragplug.adapters.lora.batched import SegmentedLoRA

torch = pytest.importorskip("torch")

SHORT = GenerationConfig(max_new_tokens=10)
ROWS = [None, "alpha", "gamma", "wide", "alpha", "beta", None, "wide"]


@pytest.fixture(scope="module")
def four_adapters(tiny_llm: dict[str, Path]):
    """alpha and beta (r=4, q/v), gamma (r=4, q/k/o) and wide (r=8, v/up/down): ranks and layers differ."""
    model = LoRAModel(tiny_llm["base"], {name: tiny_llm[name] for name in ("alpha", "beta", "gamma", "wide")})
    yield model
    model.close()


def _logits(model: LoRAModel, rows: list[str | None], *, segmented: bool) -> torch.Tensor:
    ids = torch.randint(10, 500, (len(rows), 9), generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        if segmented:
            assert model._segmented is not None
            with model._segmented.apply(rows):
                return model.model(input_ids=ids).logits
        return model.model(input_ids=ids, adapter_names=[r or "__base__" for r in rows]).logits


def test_segmented_forward_equals_peft_adapter_names(four_adapters: LoRAModel) -> None:
    reference = _logits(four_adapters, ROWS, segmented=False)
    ours = _logits(four_adapters, ROWS, segmented=True)
    torch.testing.assert_close(ours, reference, rtol=1e-4, atol=1e-5)
    # and the adapters really differ row to row (the comparison is not between identical base outputs)
    assert not torch.allclose(reference[1], reference[0], atol=1e-3)
    assert not torch.allclose(reference[2], reference[1], atol=1e-3)
    # peft's layers are enabled again afterwards: a plain forward uses the active adapter
    ids = torch.arange(20, 29).unsqueeze(0)
    with torch.inference_mode():
        plain = four_adapters.model(input_ids=ids).logits
        with four_adapters.model.disable_adapter():
            base = four_adapters.model(input_ids=ids).logits
    assert not torch.allclose(plain, base, atol=1e-4)


def test_segmented_and_peft_generation_agree(tiny_llm: dict[str, Path], four_adapters: LoRAModel) -> None:
    prompts = [four_adapters.render([{"role": "user", "content": q}]) for q in ("Who is Marley?", "A ghost?")]
    requests = [GenerationRequest(prompts[i % 2], adapter=a, config=SHORT) for i, a in enumerate(ROWS)]
    fast = four_adapters.generate_batch(requests)
    slow_model = LoRAModel(
        tiny_llm["base"],
        {name: tiny_llm[name] for name in ("alpha", "beta", "gamma", "wide")},
        load=LoadConfig(mixed_lora="peft"),
    )
    try:
        slow = slow_model.generate_batch(requests)
    finally:
        slow_model.close()
    assert [r.token_ids for r in fast] == [r.token_ids for r in slow]
    assert len({tuple(r.token_ids) for r in fast}) >= 4  # five adapters (base included) answer differently


def test_stacked_weights_follow_adapter_changes(tiny_llm: dict[str, Path]) -> None:
    model = LoRAModel(tiny_llm["base"], {"x": tiny_llm["alpha"], "y": tiny_llm["gamma"]})
    try:
        prompt = model.render([{"role": "user", "content": "Who is Scrooge?"}])

        def mixed() -> list[list[int]]:
            reqs = [GenerationRequest(prompt, adapter=a, config=SHORT) for a in ("x", "y", None)]
            return [r.token_ids for r in model.generate_batch(reqs)]

        def alone(adapter: str) -> list[int]:
            return model.generate_batch([GenerationRequest(prompt, adapter=adapter, config=SHORT)])[0].token_ids

        first = mixed()
        model.remove_adapter("x")
        model.add_adapter("x", tiny_llm["beta"])  # same name, other weights: the stacked copy must not be stale
        second = mixed()
        assert second[0] != first[0] and second[1:] == first[1:]
        assert second[0] == alone("x")
        model.merge("y")  # merged serving does not go through the stacked weights
        assert alone("y") == first[1]
        model.unmerge()
        assert mixed() == second
    finally:
        model.close()


def test_variants_fall_back_to_peft(tiny_llm: dict[str, Path]) -> None:
    model = LoRAModel(tiny_llm["base"], {"alpha": tiny_llm["alpha"], "dora": tiny_llm["dora"]})
    try:
        assert model._segmented is not None and not model._segmented.supported()
        assert model._segmented.supported(["alpha", None]) and not model._segmented.supported(["alpha", "dora"])
        prompt = model.render([{"role": "user", "content": "Who is Scrooge?"}])
        rows = ["dora", "alpha", None]
        mixed = model.generate_batch([GenerationRequest(prompt, adapter=a, config=SHORT) for a in rows])
        for adapter, result in zip(rows, mixed, strict=True):
            alone = model.generate_batch([GenerationRequest(prompt, adapter=adapter, config=SHORT)])[0]
            assert result.token_ids == alone.token_ids, adapter
        model.remove_adapter("dora")
        assert model._segmented.supported()
    finally:
        model.close()


def test_batch_size_must_match_the_rows(four_adapters: LoRAModel) -> None:
    segmented = SegmentedLoRA(four_adapters.model)
    with torch.inference_mode(), segmented.apply(["alpha", "beta"]), pytest.raises(RuntimeError, match="2 rows"):
        four_adapters.model(input_ids=torch.zeros(3, 4, dtype=torch.long))


def test_bf16_base_keeps_peft_precision(tiny_llm: dict[str, Path]) -> None:
    """Under a bf16 base, peft keeps adapters in fp32 and computes their terms in fp32; so does the segmented path."""
    model = LoRAModel(
        tiny_llm["base"], {n: tiny_llm[n] for n in ("alpha", "gamma", "wide")}, load=LoadConfig(dtype="bfloat16")
    )
    try:
        rows = ["alpha", None, "gamma", "wide"]
        layers = model._segmented._layers(("alpha", "gamma", "wide"))  # type: ignore[union-attr]
        assert {layer.a.dtype for layer in layers} == {torch.float32}
        reference = _logits(model, rows, segmented=False).float()
        ours = _logits(model, rows, segmented=True).float()
        torch.testing.assert_close(ours, reference, rtol=0.02, atol=0.02)
        assert (ours.argmax(-1) == reference.argmax(-1)).float().mean() > 0.97
    finally:
        model.close()


def test_load_config_changes_take_effect_at_the_next_batch(four_adapters: LoRAModel) -> None:
    """The engine reads its LoadConfig when it serves (as the serving benchmark relies on): a model switched to
    mixed_lora="peft" after loading routes the next mixed batch through peft's adapter_names loop."""
    from dataclasses import replace

    model, load = four_adapters, four_adapters.load_config
    rows: list[str | None] = ["alpha", None]
    assert model._adapters.route(rows, load.mixed_lora)[0][2] == {}  # segmented: no generate kwargs
    model.load_config = replace(load, mixed_lora="peft", truncation="left")
    try:
        assert model._adapters.route(rows, model.load_config.mixed_lora)[0][2] == {
            "adapter_names": ["alpha", "__base__"]
        }
        long = GenerationRequest([5] * (model.context_window + 10), config=GenerationConfig(max_new_tokens=2))
        assert model.generate_batch([long])[0].prompt_tokens == model.context_window - 2  # cut on the left now
    finally:
        model.load_config = load
