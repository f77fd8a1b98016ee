"""The LoRA engine on a tiny random model: adapters per request, mixed batches, merging, batching of
concurrent requests, grammar-constrained outputs, streaming, cancellation and bad input."""

from __future__ import annotations

import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import jsonschema
import pytest

from ragplug.adapters.lora import GenerationConfig, GenerationRequest, LoadConfig, LoRAModel, ToolSpec
from ragplug.adapters.lora.tools import forced_call_schema, parse_tool_calls
from ragplug.errors import (
    AdapterError,
    AdapterMismatchError,
    ContextLengthError,
    InvalidInputError,
    SchemaError,
    UnknownAdapterError,
)

MESSAGES = [{"role": "user", "content": "Who is Scrooge?"}]
SHORT = GenerationConfig(max_new_tokens=12)


def _greedy(model: LoRAModel, adapter: str | None, messages=MESSAGES) -> str:
    return model.generate_batch([GenerationRequest(model.render(messages), adapter=adapter, config=SHORT)])[0].text


def test_each_adapter_changes_the_output(lora_model: LoRAModel) -> None:
    outputs = {name: _greedy(lora_model, name) for name in (None, "alpha", "beta")}
    assert len(set(outputs.values())) == 3, outputs
    assert _greedy(lora_model, "alpha") == outputs["alpha"]  # deterministic


def test_mixed_adapter_batch_equals_single_adapter_runs(lora_model: LoRAModel) -> None:
    prompts = [lora_model.render([{"role": "user", "content": q}]) for q in ("Who is Marley?", "What is a ghost?")]
    adapters = [None, "alpha", "beta", "alpha", None, "beta"]
    requests = [GenerationRequest(prompts[i % 2], adapter=a, config=SHORT) for i, a in enumerate(adapters)]
    mixed = lora_model.generate_batch(requests)
    for i, (request, result) in enumerate(zip(requests, mixed, strict=True)):
        alone = lora_model.generate_batch([GenerationRequest(prompts[i % 2], adapter=request.adapter, config=SHORT)])
        assert result.token_ids == alone[0].token_ids, f"row {i} ({request.adapter})"
        assert result.adapter == request.adapter and result.prompt_tokens == len(prompts[i % 2])


def test_concurrent_requests_share_generate_calls(tiny_llm: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    model = LoRAModel(
        tiny_llm["base"], {"alpha": tiny_llm["alpha"], "beta": tiny_llm["beta"]}, load=LoadConfig(batch_window_ms=200)
    )
    sizes: list[int] = []
    original = model._serve_batch  # what the scheduler calls, once per batch

    def counting(requests):
        sizes.append(len(requests))
        return original(requests)

    monkeypatch.setattr(model, "_serve_batch", counting)
    expected = {a: _greedy(model, a) for a in (None, "alpha", "beta")}
    sizes.clear()
    adapters = [None, "alpha", "beta", "alpha", "beta", None, "alpha", "beta"]
    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(lambda a: model.chat(MESSAGES, adapter=a, config=SHORT), adapters))
    assert [r.content for r in results] == [expected[a] for a in adapters]
    assert sum(sizes) == 8 and len(sizes) < 8 and max(sizes) > 1, sizes
    model.close()


async def test_async_requests_are_batched_too(lora_model: LoRAModel) -> None:
    import asyncio

    results = await asyncio.gather(*(lora_model.achat(MESSAGES, adapter=a, config=SHORT) for a in ("alpha", "beta")))
    assert [r.content for r in results] == [_greedy(lora_model, "alpha"), _greedy(lora_model, "beta")]


def test_add_remove_and_merge(tiny_llm: dict[str, Path]) -> None:
    model = LoRAModel(tiny_llm["base"])
    base_text = _greedy(model, None)
    model.add_adapter("gamma", tiny_llm["gamma"])
    gamma_text = _greedy(model, "gamma")
    assert gamma_text != base_text
    model.merge("gamma")
    assert model.merged == "gamma"
    merged = model.generate_batch([GenerationRequest(model.render(MESSAGES), adapter="gamma", config=SHORT)])[0]
    assert merged.text == gamma_text
    with pytest.raises(AdapterError, match="merged"):
        _greedy(model, None)
    model.unmerge()
    assert _greedy(model, None) == base_text
    model.remove_adapter("gamma")
    assert model.adapters == [] and _greedy(model, None) == base_text
    with pytest.raises(UnknownAdapterError, match="gamma"):
        _greedy(model, "gamma")
    model.close()


def test_adapter_errors(tiny_llm: dict[str, Path], lora_model: LoRAModel, tmp_path: Path) -> None:
    with pytest.raises(UnknownAdapterError, match="'nope'"):
        lora_model.chat(MESSAGES, adapter="nope")
    with pytest.raises(AdapterMismatchError, match="another base model"):
        lora_model.add_adapter("foreign", tiny_llm["foreign"])
    assert "foreign" not in lora_model.adapters
    with pytest.raises(AdapterError, match="already loaded"):
        lora_model.add_adapter("alpha", tiny_llm["alpha"])
    pickled = tmp_path / "pickled"
    pickled.mkdir()
    (pickled / "adapter_config.json").write_text((tiny_llm["alpha"] / "adapter_config.json").read_text())
    (pickled / "adapter_model.bin").write_bytes(b"not loaded")
    with pytest.raises(AdapterError, match="safetensors"):
        lora_model.add_adapter("pickled", pickled)
    with pytest.raises(InvalidInputError, match="cannot find adapter"):
        lora_model.add_adapter("missing", "nobody/no-such-adapter")
    assert _greedy(lora_model, "alpha")  # still serving


TOOLS = [
    ToolSpec(
        "search",
        "Search the book",
        {
            "type": "object",
            "properties": {"query": {"type": "string"}, "k": {"type": "integer", "minimum": 1}},
            "required": ["query", "k"],
        },
    ),
    ToolSpec(
        "add", "Add numbers", {"type": "object", "properties": {"a": {"type": "number"}, "b": {"type": "number"}}}
    ),
]

SCHEMAS = [
    {
        "type": "object",
        "properties": {"answer": {"type": "string"}, "sure": {"type": "boolean"}},
        "required": ["answer", "sure"],
    },
    {"type": "object", "properties": {"items": {"type": "array", "items": {"type": "integer"}}}, "required": ["items"]},
    {
        "type": "object",
        "properties": {
            "person": {
                "type": "object",
                "properties": {
                    "name": {"type": "string"},
                    "age": {"type": "integer"},
                    "tags": {"type": "array", "items": {"type": "string"}},
                },
                "required": ["name", "age", "tags"],
            },
            "mood": {"enum": ["merry", "gloomy"]},
        },
        "required": ["person", "mood"],
    },
]


@pytest.mark.parametrize("temperature", [0.0, 1.5])
@pytest.mark.parametrize("budget", [8, 40])
def test_constrained_outputs_always_parse_and_validate(lora_model: LoRAModel, temperature: float, budget: int) -> None:
    config = GenerationConfig(max_new_tokens=budget, temperature=temperature)
    for adapter in (None, "alpha", "beta"):
        for schema in SCHEMAS:
            result = lora_model.chat(MESSAGES, response_schema=schema, adapter=adapter, config=config)
            jsonschema.validate(json.loads(result.content), schema)
        for choice in ("required", "search", "add"):
            result = lora_model.chat(MESSAGES, tools=TOOLS, tool_choice=choice, adapter=adapter, config=config)
            (call,) = result.tool_calls
            assert choice in ("required", call.name)
            spec = next(t for t in TOOLS if t.name == call.name)
            jsonschema.validate(call.arguments, spec.parameters)


def test_forced_tool_call_schema_and_tool_choice_forms() -> None:
    schema = forced_call_schema(TOOLS)
    assert [o["properties"]["name"]["const"] for o in schema["anyOf"]] == ["search", "add"]
    from ragplug.adapters.lora.tools import resolve_tool_choice

    assert resolve_tool_choice("any", TOOLS)[0] == "required"
    assert resolve_tool_choice({"type": "function", "function": {"name": "add"}}, TOOLS) == ("required", [TOOLS[1]])
    assert resolve_tool_choice(None, []) == ("none", [])
    with pytest.raises(InvalidInputError, match="is not 'auto'"):
        resolve_tool_choice("multiply", TOOLS)
    with pytest.raises(InvalidInputError, match="needs at least one"):
        resolve_tool_choice("any", [])


def test_auto_tool_calls_are_parsed_from_the_models_format() -> None:
    text = 'Let me look. <tool_call>{"name": "search", "arguments": {"query": "Marley", "k": 2}}</tool_call>'
    content, calls = parse_tool_calls(text, ["search"])
    assert content == "Let me look." and calls[0].name == "search" and calls[0].arguments == {"query": "Marley", "k": 2}
    content, calls = parse_tool_calls('{"name": "add", "parameters": {"a": 1, "b": 2}}', ["search", "add"])
    assert content == "" and calls[0].arguments == {"a": 1, "b": 2}
    assert parse_tool_calls('{"name": "unknown", "arguments": {}}', ["search"])[1] == []
    assert parse_tool_calls("plain answer", ["search"]) == ("plain answer", [])


def test_schema_rejected_by_the_compiler(lora_model: LoRAModel) -> None:
    with pytest.raises(SchemaError, match="rejected"):
        lora_model.chat(MESSAGES, response_schema={"type": "no-such-type"})
    with pytest.raises(SchemaError):
        lora_model.chat(MESSAGES, response_schema={"type": "object", "properties": {"x": {"$ref": "#/nowhere"}}})
    assert _greedy(lora_model, None)  # the model still serves


def test_stop_sequences_and_usage(lora_model: LoRAModel) -> None:
    full = lora_model.chat(MESSAGES, config=GenerationConfig(max_new_tokens=12))
    stop = full.content[4:7]
    cut = lora_model.chat(MESSAGES, config=GenerationConfig(max_new_tokens=12, stop=(stop,)))
    assert cut.content == full.content[: full.content.find(stop)] and cut.finish_reason == "stop"
    assert full.finish_reason == "length" and full.completion_tokens == 12
    assert full.prompt_tokens == len(lora_model.render(MESSAGES)) and full.total_tokens == full.prompt_tokens + 12


def test_streaming_matches_the_whole_answer(lora_model: LoRAModel) -> None:
    items = list(lora_model.stream_chat(MESSAGES, adapter="beta", config=SHORT))
    *deltas, final = items
    assert all(isinstance(d, str) for d in deltas) and len(deltas) > 1
    assert "".join(deltas) == final.content == _greedy(lora_model, "beta")


def test_cancelled_stream_frees_the_request(lora_model: LoRAModel) -> None:
    stream = lora_model.stream_chat(MESSAGES, config=GenerationConfig(max_new_tokens=200))
    first = next(stream)
    assert isinstance(first, str)
    stream.close()  # the consumer goes away half way
    after = lora_model.chat(MESSAGES, adapter="alpha", config=SHORT)
    assert after.content == _greedy(lora_model, "alpha")


def test_cancel_flag_stops_a_row_early(lora_model: LoRAModel) -> None:
    seen: list[str] = []
    request = GenerationRequest(lora_model.render(MESSAGES), config=GenerationConfig(max_new_tokens=300))
    request.on_text = lambda d: (seen.append(d), request.cancel.set())
    result = lora_model.submit(request).result(timeout=60)
    assert result.finish_reason == "cancelled" and result.completion_tokens < 5


def test_context_length_policy(tiny_llm: dict[str, Path], lora_model: LoRAModel) -> None:
    long_messages = [{"role": "user", "content": "ghost " * 600}]
    with pytest.raises(ContextLengthError, match="context window of 512"):
        lora_model.chat(long_messages, config=SHORT)
    left = LoRAModel(tiny_llm["base"], load=LoadConfig(truncation="left"))
    result = left.chat(long_messages, config=SHORT)
    assert result.prompt_tokens == 512 - 12
    left.close()


def test_bad_configuration() -> None:
    with pytest.raises(InvalidInputError, match="max_new_tokens"):
        GenerationConfig(max_new_tokens=0)
    with pytest.raises(InvalidInputError, match="temperature"):
        GenerationConfig(temperature=-1)
    with pytest.raises(InvalidInputError, match="stop"):
        GenerationConfig(stop="END")  # type: ignore[arg-type]
    with pytest.raises(InvalidInputError, match="truncation"):
        LoadConfig(truncation="middle")  # type: ignore[arg-type]
    for bad in (0, -1.0, float("inf"), "2"):
        with pytest.raises(InvalidInputError, match="idle_exit_s"):
            LoadConfig(idle_exit_s=bad)  # type: ignore[arg-type]
    with pytest.raises(InvalidInputError, match="mixed_lora"):
        LoadConfig(mixed_lora="loop")  # type: ignore[arg-type]
    with pytest.raises(InvalidInputError, match="CUDA"):
        LoRAModel("unused", load=LoadConfig(quantization="4bit"))  # no GPU here: refused before loading


def test_scheduler_survives_a_failing_batch(lora_model: LoRAModel) -> None:
    bad = GenerationRequest([], config=SHORT)  # bypasses submit's checks by going straight to the queue
    scheduler = lora_model._scheduler
    with scheduler.worker_lock:
        scheduler.queue.put(bad)
        if scheduler.worker is None:  # the scheduler may have ended while idle
            scheduler.worker = threading.Thread(target=scheduler.serve, daemon=True)
            scheduler.worker.start()
    with pytest.raises(InvalidInputError, match="empty"):
        bad.future.result(timeout=60)
    assert _greedy(lora_model, "beta")
    done = threading.Event()
    lora_model.submit(GenerationRequest(lora_model.render(MESSAGES), config=SHORT)).add_done_callback(
        lambda _: done.set()
    )
    assert done.wait(60)


def test_scheduler_thread_ends_when_idle_and_requests_are_never_lost(tiny_llm: dict[str, Path]) -> None:
    model = LoRAModel(tiny_llm["base"], {"alpha": tiny_llm["alpha"]}, load=LoadConfig(idle_exit_s=0.15))
    try:
        prompt = model.render(MESSAGES)
        first = model.submit(GenerationRequest(prompt, adapter="alpha", config=SHORT)).result(timeout=60)
        worker = model._scheduler.worker
        assert worker is not None
        worker.join(timeout=10)
        assert not worker.is_alive() and model._scheduler.worker is None  # ended once idle
        futures = []  # submissions around the moment the scheduler decides to end
        for i in range(12):
            time.sleep(0.04 * (i % 5))
            futures.append(model.submit(GenerationRequest(prompt, adapter="alpha", config=SHORT)))
        assert all(f.result(timeout=60).token_ids == first.token_ids for f in futures)
    finally:
        model.close()


def test_submit_does_not_wait_for_a_running_batch(lora_model: LoRAModel) -> None:
    """``achat`` submits from the event loop: submitting must not block while a batch generates."""
    started, slow = threading.Event(), GenerationConfig(max_new_tokens=40)

    def crawl(_text: str) -> None:
        started.set()
        time.sleep(0.02)  # the running batch takes >= 0.8 s

    long = GenerationRequest(lora_model.render(MESSAGES), config=slow, on_text=crawl)
    with ThreadPoolExecutor(1) as pool:
        running = pool.submit(lora_model.generate_batch, [long])
        assert started.wait(60)
        t0 = time.perf_counter()
        future = lora_model.submit(GenerationRequest(lora_model.render(MESSAGES), config=SHORT))
        assert time.perf_counter() - t0 < 0.2
        assert not future.done()  # it is served after the running batch
        running.result(timeout=60)
        assert future.result(timeout=60).completion_tokens > 0


def test_a_request_submitted_twice_does_not_stop_the_scheduler(lora_model: LoRAModel) -> None:
    request = GenerationRequest(lora_model.render(MESSAGES), config=SHORT)
    first, again = lora_model.submit(request), lora_model.submit(request)
    assert first is again and first.result(timeout=60).completion_tokens > 0
    later = lora_model.submit(GenerationRequest(lora_model.render(MESSAGES), adapter="alpha", config=SHORT))
    assert later.result(timeout=60).token_ids == _greedy_ids(lora_model, "alpha")


def _greedy_ids(model: LoRAModel, adapter: str | None) -> list[int]:
    request = GenerationRequest(model.render(MESSAGES), adapter=adapter, config=SHORT)
    return model.generate_batch([request])[0].token_ids
