"""The local LLM under adversarial use (issue 13): schemas that cannot finish within the context,
abandoned streams, malformed requests in a shared batch, failed adapter loads, truncated adapter files,
non-object structured-output schemas, string stop sequences, diverged training and lone surrogates.
Each failure must stay with the request that caused it and surface as a ``ragplug.errors`` error."""

from __future__ import annotations

import asyncio
import json
import re
import shutil
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from ragplug.adapters.lora import GenerationConfig, GenerationRequest, LoadConfig, LoRAModel
from ragplug.errors import (
    AdapterError,
    ContextLengthError,
    InvalidInputError,
    SchemaError,
    UnknownAdapterError,
)

MESSAGES = [{"role": "user", "content": "Who is Scrooge?"}]
SHORT = GenerationConfig(max_new_tokens=12)
RECURSIVE = {"type": "object", "properties": {"child": {"$ref": "#"}}, "required": ["child"]}


def _greedy_ids(model: LoRAModel, adapter: str | None = None) -> list[int]:
    request = GenerationRequest(model.render(MESSAGES), adapter=adapter, config=SHORT)
    return model.generate_batch([request])[0].token_ids


def _queue_directly(model: LoRAModel, *requests: GenerationRequest) -> None:
    """Put requests on the scheduler's queue as submit would, but without submit's checks."""
    scheduler = model._scheduler
    with scheduler.worker_lock:
        for request in requests:
            scheduler.queue.put(request)
        if scheduler.worker is None or not scheduler.worker.is_alive():
            scheduler.start_worker()


@pytest.fixture
def batching_model(tiny_llm: dict[str, Path]) -> Iterator[LoRAModel]:
    """A model whose scheduler waits long enough to gather requests from several callers into one batch."""
    model = LoRAModel(
        tiny_llm["base"], {"alpha": tiny_llm["alpha"], "beta": tiny_llm["beta"]}, load=LoadConfig(batch_window_ms=300)
    )
    yield model
    model.close()


# -- 1. constrained generation stays within its limits ----------------------------------------------------
@pytest.mark.parametrize("schema", [RECURSIVE, {"const": "x" * 3000}], ids=["recursive", "longer-than-context"])
def test_schema_without_a_valid_document_in_the_context_is_refused(lora_model: LoRAModel, schema: dict) -> None:
    t0 = time.perf_counter()
    with pytest.raises(SchemaError, match="512 tokens"):
        lora_model.chat(MESSAGES, response_schema=schema, config=GenerationConfig(max_new_tokens=16))
    assert time.perf_counter() - t0 < 5  # refused before any generation
    request = GenerationRequest(lora_model.render(MESSAGES), config=GenerationConfig(max_new_tokens=16), schema=schema)
    with pytest.raises(SchemaError):
        lora_model.generate_batch([request])  # the direct path is bounded too
    assert _greedy_ids(lora_model)  # still serving


def test_raised_budget_of_a_long_schema_never_passes_the_context(tiny_llm: dict[str, Path]) -> None:
    schema = {"const": "Marley was dead: to begin with. " * 8}
    model = LoRAModel(tiny_llm["base"], load=LoadConfig(truncation="left"))
    try:
        shortest = model.grammar().shortest(schema)
        assert 16 < shortest < 512
        long_question = [{"role": "user", "content": "ghost " * 600}]
        result = model.chat(long_question, response_schema=schema, config=GenerationConfig(max_new_tokens=16))
        assert json.loads(result.content) == schema["const"]
        assert result.prompt_tokens + result.completion_tokens <= model.context_window
    finally:
        model.close()


def test_a_prompt_that_leaves_no_room_for_the_schema_is_refused(lora_model: LoRAModel) -> None:
    schema = {"const": "Marley was dead: to begin with. " * 8}
    prompt = [{"role": "user", "content": "ghost " * 225}]
    length = len(lora_model.render(prompt))
    assert length + 16 <= 512 < length + lora_model.grammar().shortest(schema)  # fits the budget, not the schema
    with pytest.raises(ContextLengthError, match="shortest valid answer"):
        lora_model.chat(prompt, response_schema=schema, config=GenerationConfig(max_new_tokens=16))


# -- 2. an abandoned async stream fails nobody else -------------------------------------------------------
def test_abandoned_async_stream_does_not_fail_another_callers_request(batching_model: LoRAModel) -> None:
    model = batching_model
    expected = model.chat(MESSAGES, config=GenerationConfig(max_new_tokens=60)).content

    async def one_chunk() -> str:
        stream = model.astream_chat(MESSAGES, config=GenerationConfig(max_new_tokens=60))
        async for item in stream:
            assert isinstance(item, str)
            return item  # the loop closes while the row still generates
        raise AssertionError

    with ThreadPoolExecutor(1) as pool:
        other = pool.submit(model.chat, MESSAGES, config=GenerationConfig(max_new_tokens=60))
        time.sleep(0.05)  # both requests fall in the same 300 ms batch window
        asyncio.run(one_chunk())
        assert other.result(timeout=60).content == expected


def test_a_failing_stream_callback_fails_only_its_row(lora_model: LoRAModel) -> None:
    def closed(_text: str) -> None:
        raise RuntimeError("Event loop is closed")

    broken = GenerationRequest(lora_model.render(MESSAGES), config=SHORT, on_text=closed)
    fine = GenerationRequest(lora_model.render(MESSAGES), adapter="alpha", config=SHORT)
    _queue_directly(lora_model, broken, fine)
    assert fine.future.result(timeout=60).token_ids == _greedy_ids(lora_model, "alpha")
    with pytest.raises(RuntimeError, match="closed"):
        broken.future.result(timeout=60)


# -- 3. one malformed request fails alone ------------------------------------------------------------------
@pytest.mark.parametrize("bad_id", [10**6, -1], ids=["out-of-range", "negative"])
def test_token_ids_outside_the_vocabulary_fail_their_request_alone(lora_model: LoRAModel, bad_id: int) -> None:
    prompt = lora_model.render(MESSAGES)
    with pytest.raises(InvalidInputError, match=f"prompt_ids\\[3\\] = {bad_id}"):
        lora_model.submit(GenerationRequest([*prompt[:3], bad_id, *prompt[3:]], config=SHORT))
    bad = GenerationRequest([*prompt[:3], bad_id, *prompt[3:]], config=SHORT)
    fine = GenerationRequest(prompt, adapter="beta", config=SHORT)
    _queue_directly(lora_model, bad, fine)  # in one batch, past submit's checks
    assert fine.future.result(timeout=60).token_ids == _greedy_ids(lora_model, "beta")
    with pytest.raises(InvalidInputError, match=str(bad_id)):
        bad.future.result(timeout=60)


def test_non_integer_token_ids_are_refused(lora_model: LoRAModel) -> None:
    with pytest.raises(InvalidInputError, match="prompt_ids"):
        lora_model.submit(GenerationRequest([1, 2.5, 3], config=SHORT))  # type: ignore[list-item]
    with pytest.raises(InvalidInputError, match="prompt_ids"):
        lora_model.submit(GenerationRequest("hello", config=SHORT))  # type: ignore[arg-type]


def test_a_request_without_a_generation_config_fails_alone(lora_model: LoRAModel) -> None:
    bad = GenerationRequest(lora_model.render(MESSAGES), config={"max_new_tokens": 4})  # type: ignore[arg-type]
    with pytest.raises(InvalidInputError, match="GenerationConfig"):
        lora_model.submit(bad)
    fine = GenerationRequest(lora_model.render(MESSAGES), adapter="alpha", config=SHORT)
    _queue_directly(lora_model, bad, fine)
    assert fine.future.result(timeout=60).token_ids == _greedy_ids(lora_model, "alpha")
    with pytest.raises(InvalidInputError, match="GenerationConfig"):
        bad.future.result(timeout=60)


def test_removing_an_adapter_fails_only_the_requests_queued_for_it(batching_model: LoRAModel) -> None:
    model = batching_model
    expected = _greedy_ids(model, "beta")
    with model._lock:  # the scheduler gathers both requests, then waits for the lock to generate
        doomed = model.submit(GenerationRequest(model.render(MESSAGES), adapter="alpha", config=SHORT))
        kept = model.submit(GenerationRequest(model.render(MESSAGES), adapter="beta", config=SHORT))
        time.sleep(0.5)  # past the batch window: both are in the scheduler's batch
        model.remove_adapter("alpha")
    assert kept.result(timeout=60).token_ids == expected
    with pytest.raises(UnknownAdapterError, match="'alpha'"):
        doomed.result(timeout=60)


def _rank_mismatch(tiny_llm: dict[str, Path], folder: Path) -> Path:
    """alpha's weights (rank 4) under a config that says rank 8."""
    shutil.copytree(tiny_llm["alpha"], folder)
    config = json.loads((folder / "adapter_config.json").read_text())
    config["r"] = 8
    (folder / "adapter_config.json").write_text(json.dumps(config))
    return folder


@pytest.mark.parametrize("first", [True, False], ids=["first-adapter", "next-adapter"])
def test_failed_add_adapter_leaves_no_trace(tiny_llm: dict[str, Path], tmp_path: Path, first: bool) -> None:
    model = LoRAModel(tiny_llm["base"], None if first else {"beta": tiny_llm["beta"]})
    reference = LoRAModel(tiny_llm["base"], {"alpha": tiny_llm["alpha"]})
    try:
        base_ids = _greedy_ids(model)
        with pytest.raises(AdapterError, match="rank"):
            model.add_adapter("alpha", _rank_mismatch(tiny_llm, tmp_path / "bad"))
        assert "alpha" not in model.adapters
        assert _greedy_ids(model) == base_ids  # the base model is untouched
        model.add_adapter("alpha", tiny_llm["alpha"])  # the name is free again
        assert _greedy_ids(model, "alpha") == _greedy_ids(reference, "alpha")
    finally:
        model.close()
        reference.close()


@pytest.mark.parametrize("first", [True, False], ids=["first-adapter", "next-adapter"])
def test_a_load_that_fails_half_way_is_rolled_back(
    tiny_llm: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, first: bool
) -> None:
    """Whatever peft fails on after it has changed the model, add_adapter undoes the change."""
    model = LoRAModel(tiny_llm["base"], None if first else {"beta": tiny_llm["beta"]})
    try:
        base_ids = _greedy_ids(model)
        monkeypatch.setattr(model._adapters, "check", lambda name, folder: None)  # let the bad adapter reach peft
        with pytest.raises(AdapterError, match="'alpha'"):
            model.add_adapter("alpha", _rank_mismatch(tiny_llm, tmp_path / "bad"))
        monkeypatch.undo()
        assert "alpha" not in model.adapters and _greedy_ids(model) == base_ids
        model.add_adapter("alpha", tiny_llm["alpha"])
        assert _greedy_ids(model, "alpha") != base_ids
    finally:
        model.close()


# -- 7. truncated adapter files ----------------------------------------------------------------------------
@pytest.mark.parametrize("file", ["adapter_config.json", "adapter_model.safetensors"])
@pytest.mark.parametrize("keep", [0.5, 0.99])
def test_truncated_adapter_file_is_named(
    tiny_llm: dict[str, Path], lora_model: LoRAModel, tmp_path: Path, file: str, keep: float
) -> None:
    folder = tmp_path / "truncated"
    shutil.copytree(tiny_llm["gamma"], folder)
    data = (folder / file).read_bytes()
    (folder / file).write_bytes(data[: int(len(data) * keep)])
    with pytest.raises(AdapterError, match=file):
        lora_model.add_adapter("truncated", folder)
    assert "truncated" not in lora_model.adapters
    assert _greedy_ids(lora_model, "alpha")


# -- 8. lone surrogates ------------------------------------------------------------------------------------
def test_lone_surrogate_in_a_message_is_named(lora_model: LoRAModel) -> None:
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "caf\udc80"}]
    with pytest.raises(InvalidInputError, match=r"messages\[1\]\['content'\].*surrogate"):
        lora_model.chat(messages, config=SHORT)
    with pytest.raises(InvalidInputError, match=r"messages\[0\]\['content'\]"):
        lora_model.stream_chat([{"role": "user", "content": "\ud800"}], config=SHORT)


def test_lone_surrogate_in_a_training_example_is_named() -> None:
    from ragplug.adapters.lora import TrainExample
    from ragplug.adapters.lora.train import _as_examples

    with pytest.raises(InvalidInputError, match=r"answer.*surrogate"):
        TrainExample("Who?", "Bob\udc80")
    with pytest.raises(InvalidInputError, match=r"example 1: context.*surrogate"):
        _as_examples([{"question": "a", "answer": "b"}, {"question": "a", "answer": "b", "context": "\ud800x"}])


# -- 6. diverged training ----------------------------------------------------------------------------------
TRAIN = [{"question": f"What is the code of item {i}?", "answer": f"K{i}Z"} for i in range(4)]


@pytest.fixture
def one_thread() -> Iterator[None]:
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.usefixtures("one_thread")
@pytest.mark.parametrize(
    ("learning_rate", "batch_size", "nan_weight"),
    [(1e8, 2, False), (1e37, 4, False), (2e-4, 2, True), (1e30, 1, False)],
    ids=["exploding-update", "overflowing-update", "non-finite-weight", "non-finite-loss"],
)
def test_diverged_training_raises_and_writes_nothing(
    tiny_llm: dict[str, Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    learning_rate: float,
    batch_size: int,
    nan_weight: bool,
) -> None:
    import torch

    import ragplug.adapters.lora.train as train_module
    from ragplug.adapters.lora import TrainConfig, train_lora

    if nan_weight:  # what a last optimiser step can do after the last (finite) loss was measured
        fit = train_module._fit

        def fit_then_break(torch_: object, model: torch.nn.Module, *args: object) -> object:
            result = fit(torch_, model, *args)
            next(p for n, p in model.named_parameters() if "lora_B" in n).data[0, 0] = float("nan")
            return result

        monkeypatch.setattr(train_module, "_fit", fit_then_break)
    config = TrainConfig(r=2, epochs=1, batch_size=batch_size, learning_rate=learning_rate, progress=False)
    with pytest.raises(InvalidInputError, match="diverged"):
        train_lora(tiny_llm["base"], TRAIN, tmp_path / "out", config=config)
    assert list(tmp_path.iterdir()) == []
    old = tmp_path / "old"
    shutil.copytree(tiny_llm["alpha"], old)
    before = {f.name: f.read_bytes() for f in old.iterdir()}
    with pytest.raises(InvalidInputError, match="diverged"):
        train_lora(tiny_llm["base"], TRAIN, old, config=config, overwrite=True)
    assert {f.name: f.read_bytes() for f in old.iterdir()} == before
    assert [p.name for p in tmp_path.iterdir()] == ["old"]


# -- 4. structured output compiles the schema the user gave ------------------------------------------------
ARRAY = {"title": "Numbers", "type": "array", "items": {"type": "integer"}, "minItems": 2, "maxItems": 3}
ENUM = {"title": "Mood", "enum": ["merry", "gloomy"]}


@pytest.mark.parametrize("schema", [ARRAY, ENUM], ids=["array", "enum"])
def test_langchain_json_schema_output_follows_a_non_object_schema(lora_model: LoRAModel, schema: dict) -> None:
    import jsonschema

    from ragplug.plugins.langchain import ChatLoRA

    chat = ChatLoRA(llm=lora_model, max_new_tokens=16)
    answer = chat.with_structured_output(schema, method="json_schema").invoke("Count to three.")
    jsonschema.validate(answer, schema)


def test_langchain_structured_output_refuses_what_it_cannot_constrain(lora_model: LoRAModel) -> None:
    from ragplug.plugins.langchain import ChatLoRA

    chat = ChatLoRA(llm=lora_model, max_new_tokens=16)
    with pytest.raises(SchemaError, match="bogus"):
        chat.with_structured_output({"title": "B", "type": "bogus"}, method="json_schema")
    with pytest.raises(SchemaError, match=r"'Numbers'.*object"):
        chat.with_structured_output(ARRAY)  # function calling: a tool's arguments are an object
    with pytest.raises(SchemaError, match=r"'Numbers'.*object"):
        chat.bind_tools([ARRAY])


def test_llamaindex_tool_schemas_are_kept_whole(lora_model: LoRAModel) -> None:
    from llama_index.core.bridge.pydantic import BaseModel, ConfigDict
    from llama_index.core.program.function_program import get_function_tool
    from pydantic import RootModel

    from ragplug.plugins.llamaindex.llms import _tool_dict

    class Strict(BaseModel):
        model_config = ConfigDict(extra="forbid")
        mood: str

    spec = _tool_dict(get_function_tool(Strict))["function"]["parameters"]
    assert spec["additionalProperties"] is False and spec["required"] == ["mood"]

    class Numbers(RootModel[list[int]]):
        pass

    with pytest.raises(SchemaError, match=r"'Numbers'.*object"):
        _tool_dict(get_function_tool(Numbers))


def test_llamaindex_structured_predict_refuses_a_non_object_output(lora_model: LoRAModel) -> None:
    from llama_index.core.prompts import PromptTemplate
    from pydantic import RootModel

    from ragplug.plugins.llamaindex import LoRALLM

    class Numbers(RootModel[list[int]]):
        pass

    llm = LoRALLM(llm=lora_model, max_new_tokens=16)
    with pytest.raises(SchemaError, match="object"):
        llm.structured_predict(Numbers, PromptTemplate("Count to {n}."), n="three")


def test_llamaindex_response_schema_is_compiled_as_given(lora_model: LoRAModel) -> None:
    import jsonschema

    from ragplug.plugins.llamaindex import LoRALLM

    llm = LoRALLM(llm=lora_model, max_new_tokens=16)
    response = llm.complete("Count to three.", response_schema=ARRAY)
    jsonschema.validate(json.loads(response.text), ARRAY)
    with pytest.raises(SchemaError, match="bogus"):
        llm.complete("Count.", response_schema={"type": "bogus"})


# -- 5. a string stop is one stop sequence (LangChain), or refused (GenerationConfig, LlamaIndex) -----------
def test_a_string_stop_is_never_split_into_characters(lora_model: LoRAModel) -> None:
    from ragplug.plugins.langchain import ChatLoRA
    from ragplug.plugins.llamaindex import LoRALLM

    full = lora_model.chat(MESSAGES, config=SHORT).content
    stop = full[3:6]
    expected = full[: full.find(stop)]
    chat = ChatLoRA(llm=lora_model, max_new_tokens=12)
    assert chat._options(stop, {}).config.stop == (stop,)  # type: ignore[arg-type]
    assert chat.invoke("Who is Scrooge?", stop=stop).content == expected  # type: ignore[arg-type]
    assert ChatLoRA(llm=lora_model, stop=stop)._options(None, {}).config.stop == (stop,)  # type: ignore[arg-type]
    with pytest.raises(InvalidInputError, match=re.escape(f"pass ({stop!r},)")):
        GenerationConfig(stop=stop)  # type: ignore[arg-type]
    llm = LoRALLM(llm=lora_model, max_new_tokens=12)
    with pytest.raises(InvalidInputError, match="one stop string"):
        llm.complete("Who is Scrooge?", stop=stop)
    assert llm.complete("Who is Scrooge?", stop=[stop]).text == expected


def test_rows_of_one_batch_never_run_past_the_context(lora_model: LoRAModel) -> None:
    """A finished row keeps being fed (padding) while the others generate: its positions must stay inside
    the context window too, or a model with learned position embeddings fails the whole batch."""
    import torch

    seen: list[int] = []
    inner = lora_model.model.get_base_model().model if hasattr(lora_model.model, "get_base_model") else None
    assert inner is not None

    def record(_module: torch.nn.Module, _args: tuple, kwargs: dict) -> None:
        if kwargs.get("position_ids") is not None:
            seen.append(int(kwargs["position_ids"].max()))

    long_prompt = lora_model.render([{"role": "user", "content": "ghost " * 225}])
    assert len(long_prompt) + 12 <= 512 < len(long_prompt) + 100
    requests = [
        GenerationRequest(long_prompt, config=GenerationConfig(max_new_tokens=12)),
        GenerationRequest(lora_model.render(MESSAGES), adapter="alpha", config=GenerationConfig(max_new_tokens=100)),
    ]
    alone = [lora_model.generate_batch([GenerationRequest(r.prompt_ids, r.adapter, r.config)])[0] for r in requests]
    handle = inner.register_forward_pre_hook(record, with_kwargs=True)
    try:
        together = lora_model.generate_batch(requests)
    finally:
        handle.remove()
    assert max(seen) < lora_model.context_window
    assert [r.token_ids for r in together] == [r.token_ids for r in alone]
