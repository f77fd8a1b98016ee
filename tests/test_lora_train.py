"""LoRA training on the tiny random chat model: a trained adapter answers what the base model cannot,
through ``LoRAModel`` and ``ChatLoRA``, with and without a retrieved context; settings and bad input."""

from __future__ import annotations

import json
import random
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest

from ragplug.adapters.lora import GenerationConfig, LoRAModel
from ragplug.adapters.lora.train import TrainConfig, TrainExample, TrainResult, build_messages, train_lora
from ragplug.errors import ContextLengthError, InvalidInputError

SHORT = GenerationConfig(max_new_tokens=8)
# Measured on the tiny base (hidden size 64, 2 layers, embeddings tied to the output, std 0.02): its logits
# span only about ±1.3, so the loss cannot fall much below 5.8 and greedy answers come out right only once
# training gets close to that floor. All-linear r=16 at lr 2e-3 with linear decay reaches it in 100 epochs
# of 5 steps (exact match 1.0 on both data sets, seeds 0 and 1); lr 5e-3+ or r=8 often stalls above it.
MEMORISE = TrainConfig(r=16, lora_alpha=32, lora_dropout=0.0, learning_rate=2e-3, epochs=100, batch_size=4, seed=0)
QUICK = TrainConfig(r=2, epochs=1, batch_size=2, progress=False)
LETTERS = "ABCDEFGHJKLMNPQRSTUVWXYZ"


@pytest.fixture(scope="module", autouse=True)
def one_thread() -> Iterator[None]:
    """Matrices of width 64 gain nothing from threads; on a busy 2-core machine threads cost 10-30x."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _codes(n: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    return [f"{rng.choice(LETTERS)}{rng.randrange(10)}{rng.choice(LETTERS)}" for _ in range(n)]


QA = [TrainExample(f"What is the code of item {i}?", code) for i, code in enumerate(_codes(20, seed=0))]
# One question for all: only the context tells the answers apart, so memorising them means reading it.
RAG = [TrainExample("What is the password?", code, context=f"The password is {code}.") for code in _codes(20, seed=1)]


def exact_match(model: LoRAModel, examples: Sequence[TrainExample], adapter: str | None) -> float:
    hits = sum(model.chat(build_messages(ex), adapter=adapter, config=SHORT).content == ex.answer for ex in examples)
    return hits / len(examples)


@pytest.fixture(scope="module")
def qa_before(tiny_llm: dict[str, Path]) -> float:
    model = LoRAModel(tiny_llm["base"])
    try:
        return exact_match(model, QA, None)
    finally:
        model.close()


@pytest.fixture(scope="module")
def qa_adapter(tiny_llm: dict[str, Path], tmp_path_factory: pytest.TempPathFactory, qa_before: float) -> TrainResult:
    return train_lora(tiny_llm["base"], QA, tmp_path_factory.mktemp("train") / "qa", config=MEMORISE)


@pytest.fixture(scope="module")
def qa_model(tiny_llm: dict[str, Path], qa_adapter: TrainResult) -> Iterator[LoRAModel]:
    model = LoRAModel(tiny_llm["base"], {"qa": qa_adapter.output_dir})
    yield model
    model.close()


def test_trained_adapter_answers_what_the_base_cannot(qa_before: float, qa_model: LoRAModel) -> None:
    assert qa_before <= 0.1
    assert exact_match(qa_model, QA, "qa") >= 0.9
    assert exact_match(qa_model, QA, None) <= 0.1


def test_output_folder_and_result(qa_adapter: TrainResult) -> None:
    out = qa_adapter.output_dir
    assert {"adapter_config.json", "adapter_model.safetensors", "ragplug_training.json"} <= {
        p.name for p in out.iterdir()
    }
    assert [p.name for p in out.parent.iterdir()] == ["qa"]  # no staging folder left behind
    assert len(qa_adapter.epoch_losses) == MEMORISE.epochs and qa_adapter.num_examples == len(QA)
    assert qa_adapter.final_loss == qa_adapter.epoch_losses[-1] < qa_adapter.epoch_losses[0]
    meta = json.loads((out / "ragplug_training.json").read_text())
    assert meta["num_examples"] == len(QA) and meta["final_loss"] == qa_adapter.final_loss
    assert meta["config"]["r"] == MEMORISE.r and meta["config"]["target_modules"] == "all-linear"
    targets = json.loads((out / "adapter_config.json").read_text())["target_modules"]  # full names for all-linear
    assert {name.rsplit(".", 1)[-1] for name in targets} == {
        "q_proj",
        "k_proj",
        "v_proj",
        "o_proj",
        "gate_proj",
        "up_proj",
        "down_proj",
    }


def test_adapter_loads_into_chat_lora(tiny_llm: dict[str, Path], qa_adapter: TrainResult) -> None:
    from ragplug.plugins.langchain import ChatLoRA

    chat = ChatLoRA(base=tiny_llm["base"], adapters={"qa": qa_adapter.output_dir}, max_new_tokens=8)
    try:
        answers = [chat.invoke(build_messages(ex), adapter="qa").content for ex in QA[:3]]
    finally:
        chat.llm.close()
    assert answers == [ex.answer for ex in QA[:3]]


def test_context_examples_train_the_rag_path(tiny_llm: dict[str, Path], tmp_path: Path) -> None:
    prompt = build_messages(RAG[0])[-1]["content"]
    assert prompt == f"Context:\nThe password is {RAG[0].answer}.\n\nQuestion: What is the password?"
    dicts = [{"question": ex.question, "answer": ex.answer, "context": ex.context} for ex in RAG]
    result = train_lora(tiny_llm["base"], dicts, tmp_path / "rag", config=MEMORISE)
    model = LoRAModel(tiny_llm["base"], {"rag": result.output_dir})
    try:
        assert exact_match(model, RAG, "rag") >= 0.9
        assert exact_match(model, RAG, None) <= 0.1
    finally:
        model.close()


def test_same_seed_same_adapter(tiny_llm: dict[str, Path], tmp_path: Path) -> None:
    from safetensors.torch import load_file

    config = TrainConfig(r=4, epochs=2, batch_size=2, lora_dropout=0.1, learning_rate=1e-2, progress=False)
    runs = [train_lora(tiny_llm["base"], QA[:4], tmp_path / name, config=config) for name in ("a", "b")]
    assert runs[0].epoch_losses == runs[1].epoch_losses
    weights = [load_file(str(run.output_dir / "adapter_model.safetensors")) for run in runs]
    assert weights[0].keys() == weights[1].keys()
    assert all((weights[0][k] == weights[1][k]).all() for k in weights[0])


def test_training_prompt_is_the_inference_prompt(qa_model: LoRAModel) -> None:
    from ragplug.adapters.lora.train import _encode

    examples = [QA[0], RAG[0], TrainExample("Q?", "A", context="C.", system="Be brief.")]
    encoded = _encode(qa_model.tokenizer, examples, qa_model.tokenizer.eos_token_id, 512, "max_length")
    for example, (ids, labels) in zip(examples, encoded, strict=True):
        prompt = qa_model.render(build_messages(example))
        answer = qa_model.tokenizer(example.answer, add_special_tokens=False)["input_ids"]
        assert ids == [*prompt, *answer, qa_model.tokenizer.eos_token_id]
        assert labels == [-100] * len(prompt) + ids[len(prompt) :]


def test_build_messages_layout() -> None:
    assert build_messages(TrainExample("Q?", "A")) == [{"role": "user", "content": "Q?"}]
    assert build_messages({"question": "Q?", "context": "C.", "system": "Be brief."}) == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Context:\nC.\n\nQuestion: Q?"},
    ]
    with pytest.raises(InvalidInputError, match="question"):
        build_messages({"context": "C."})


# -- bad input ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("examples", "match"),
    [
        ([], "must not be empty"),
        ([{"question": "", "answer": "A"}], "example 0: question must be a non-empty string"),
        ([{"question": "Q", "answer": "   "}], "answer must be a non-empty string"),
        ([{"question": "Q"}], r"missing \['answer'\]"),
        ([{"question": "Q", "answer": "A", "passage": "x"}], r"unknown keys \['passage'\]"),
        ([{"question": "Q", "answer": "A", "context": ""}], "context must be a non-empty string"),
        (["Q? A"], "must be a TrainExample or a dict"),
        ({"question": "Q", "answer": "A"}, "examples must be a sequence"),
    ],
)
def test_bad_examples(tiny_llm: dict[str, Path], tmp_path: Path, examples, match: str) -> None:
    with pytest.raises(InvalidInputError, match=match):
        train_lora(tiny_llm["base"], examples, tmp_path / "out", config=QUICK)
    assert not (tmp_path / "out").exists()


def test_train_example_checks_itself() -> None:
    with pytest.raises(InvalidInputError, match="answer must be a non-empty string, got ''"):
        TrainExample("Q?", "")


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"r": 0}, "r must be a positive integer, got 0"),
        ({"epochs": True}, "epochs must be a positive integer, got True"),
        ({"learning_rate": -1.0}, r"learning_rate must be a positive number, got -1\.0"),
        ({"lora_alpha": float("nan")}, "lora_alpha must be a positive number, got nan"),
        ({"lora_dropout": 1.0}, r"lora_dropout must be in \[0, 1\), got 1\.0"),
        ({"target_modules": []}, r"target_modules must be 'all-linear' or a sequence of module names, got \[\]"),
        ({"target_modules": ""}, "target_modules must not be empty"),
        ({"dtype": "int8"}, "dtype must be auto, float32, bfloat16 or float16, got 'int8'"),
        ({"max_grad_norm": 0}, "max_grad_norm must be None or a positive number, got 0"),
        ({"weight_decay": -0.1}, r"weight_decay must be a number >= 0, got -0\.1"),
    ],
)
def test_bad_config(kwargs: dict, match: str) -> None:
    with pytest.raises(InvalidInputError, match=match):
        TrainConfig(**kwargs)


def test_target_modules_as_list_are_stored_as_tuple() -> None:
    assert TrainConfig(target_modules=["q_proj", "v_proj"]).target_modules == ("q_proj", "v_proj")


def test_unknown_target_module(tiny_llm: dict[str, Path], tmp_path: Path) -> None:
    config = TrainConfig(r=2, epochs=1, target_modules=("no_such_proj",), progress=False)
    with pytest.raises(InvalidInputError, match="no_such_proj"):
        train_lora(tiny_llm["base"], QA[:2], tmp_path / "out", config=config)
    assert list(tmp_path.iterdir()) == []


def test_example_longer_than_max_length(tiny_llm: dict[str, Path], tmp_path: Path) -> None:
    long = TrainExample("What is the password?", "X1Y", context="The password is X1Y. " * 20)
    config = TrainConfig(r=2, epochs=1, max_length=64, progress=False)
    with pytest.raises(ContextLengthError, match=r"example 1 has \d+ tokens .* more than max_length 64"):
        train_lora(tiny_llm["base"], [QA[0], long], tmp_path / "out", config=config)
    assert list(tmp_path.iterdir()) == []


def test_non_empty_output_dir_needs_overwrite(tiny_llm: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "old.txt").write_text("previous adapter")
    with pytest.raises(InvalidInputError, match="exists and is not empty; pass overwrite=True"):
        train_lora(tiny_llm["base"], QA[:2], out, config=QUICK)
    result = train_lora(tiny_llm["base"], QA[:2], out, config=QUICK, overwrite=True)
    assert result.output_dir == out and (out / "adapter_model.safetensors").is_file()
    assert not (out / "old.txt").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


def test_empty_output_dir_is_used(tiny_llm: dict[str, Path], tmp_path: Path) -> None:
    (tmp_path / "out").mkdir()
    result = train_lora(tiny_llm["base"], QA[:2], tmp_path / "out", config=QUICK)
    assert (result.output_dir / "adapter_config.json").is_file()


def test_failed_training_leaves_nothing(
    tiny_llm: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import ragplug.adapters.lora.train as train_module

    def boom(*args, **kwargs):
        raise RuntimeError("out of memory")

    monkeypatch.setattr(train_module, "_fit", boom)
    with pytest.raises(RuntimeError, match="out of memory"):
        train_lora(tiny_llm["base"], QA[:2], tmp_path / "out", config=QUICK)
    assert list(tmp_path.iterdir()) == []
