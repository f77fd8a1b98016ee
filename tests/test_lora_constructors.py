"""One constructor style for the local LLM in both frameworks (issue 9): ``ChatLoRA(base=...)`` and
``LoRALLM(base=...)`` take the same keywords with the same meaning, the frameworks' usual generation names
(``max_tokens``, ``temperature``, ``top_p``, ``stop``) are honoured at construction and per call, two names for
one setting and unknown keywords are refused, and the README's LoRALLM example runs on the tiny model."""

from __future__ import annotations

import itertools
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from langchain_core.callbacks import BaseCallbackHandler
from langchain_core.runnables import ConfigurableField
from llama_index.core.callbacks import CallbackManager
from llama_index.core.prompts import PromptTemplate
from transformers import AutoTokenizer

from ragplug.adapters.lora import GenerationConfig, GenerationRequest, LoadConfig, LoRAModel
from ragplug.errors import InvalidInputError, UnknownAdapterError
from ragplug.plugins.langchain import ChatLoRA
from ragplug.plugins.llamaindex import LoRALLM

QUESTION = "Who is Scrooge?"

# The README's LoRALLM example, as written there. Its first line names a hub model; the test points it at the
# tiny local model and adapter (as tests/test_docs.py does for every README block) and runs the rest unchanged.
README_EXAMPLE = """\
from llama_index.core.llms import ChatMessage
from ragplug.plugins.llamaindex import LoRALLM

base, adapters = "Qwen/Qwen2.5-0.5B-Instruct", {"carol": "path/to/carol-adapter"}  # hub ids or folders
llm = LoRALLM(base=base, adapters=adapters, max_new_tokens=64)
print(llm.complete("Who is Scrooge?").text)                     # the base model
print(llm.complete("Who is Scrooge?", adapter="carol").text)    # the same model with the adapter
messages = [
    ChatMessage(role="system", content="Answer in one sentence."),
    ChatMessage(role="user", content="Tell me about Marley."),
]
print(llm.chat(messages, adapter="carol").message.content)
for chunk in llm.stream_complete("Tell me about Marley.", adapter="carol", max_tokens=16):
    print(chunk.delta, end="")
print()

carol = LoRALLM(llm=llm.llm, adapter="carol", max_tokens=32)   # the loaded model, the adapter by default
print(carol.complete("Who is Scrooge?").text)
"""


def _ask_langchain(model: Any, **kwargs: Any) -> str:
    return model.invoke(QUESTION, **kwargs).content


def _ask_llamaindex(model: Any, **kwargs: Any) -> str:
    return model.complete(QUESTION, **kwargs).text


# Each face: its class, how to ask it one question, the names of its token budget.
FACES: dict[str, tuple[type, Callable[..., str], tuple[str, ...]]] = {
    "ChatLoRA": (ChatLoRA, _ask_langchain, ("max_new_tokens", "max_tokens")),
    "LoRALLM": (LoRALLM, _ask_llamaindex, ("max_new_tokens", "max_tokens", "num_output")),
}
BUDGET_NAMES = [(face, name) for face, (_, _, names) in FACES.items() for name in names]


@pytest.fixture(scope="module")
def tokenizer(tiny_llm: dict[str, Path]) -> Any:
    return AutoTokenizer.from_pretrained(str(tiny_llm["base"]))


def _tokens(tokenizer: Any, text: str) -> int:
    return len(tokenizer(text, add_special_tokens=False)["input_ids"])


def _engine_text(model: LoRAModel, adapter: str | None, max_new_tokens: int) -> str:
    messages = [{"role": "user", "content": QUESTION}]
    return model.chat(messages, adapter=adapter, config=GenerationConfig(max_new_tokens=max_new_tokens)).content


def _record_configs(model: LoRAModel, monkeypatch: pytest.MonkeyPatch) -> list[GenerationConfig]:
    """The GenerationConfig of every request the engine receives from now on."""
    seen: list[GenerationConfig] = []
    submit = model.submit

    def spy(request: GenerationRequest) -> Any:
        seen.append(request.config)
        return submit(request)

    monkeypatch.setattr(model, "submit", spy)
    return seen


# -- the README example -----------------------------------------------------------------------------------
def test_readme_lorallm_example_runs(tiny_llm: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    line = next(x for x in README_EXAMPLE.splitlines() if x.startswith("base, adapters = "))
    local = f"base, adapters = {str(tiny_llm['base'])!r}, {{'carol': {str(tiny_llm['alpha'])!r}}}"
    namespace: dict[str, Any] = {}
    exec(compile(README_EXAMPLE.replace(line, local), "README.md", "exec"), namespace)
    llm = namespace["llm"]
    try:
        out = capsys.readouterr().out
        assert llm.complete(QUESTION).text in out and llm.complete(QUESTION, adapter="carol").text in out
        assert namespace["carol"].complete(QUESTION).text == _engine_text(llm.llm, "carol", 32)
    finally:
        llm.llm.close()


# -- the same keywords, the same meaning ----------------------------------------------------------------------
@pytest.mark.parametrize("face", list(FACES))
def test_base_adapters_device_dtype_and_default_adapter(face: str, tiny_llm: dict[str, Path]) -> None:
    cls, ask, _ = FACES[face]
    model = cls(
        base=tiny_llm["base"],
        adapters={"alpha": tiny_llm["alpha"], "beta": tiny_llm["beta"]},
        adapter="alpha",
        device="cpu",
        dtype="float32",
        max_tokens=12,
    )
    try:
        engine = model.llm
        assert engine.adapters == ["alpha", "beta"] and engine.device.type == "cpu"
        assert next(engine.model.parameters()).dtype == torch.float32
        assert ask(model) == _engine_text(engine, "alpha", 12)  # the default adapter
        assert ask(model, adapter="beta") == _engine_text(engine, "beta", 12)  # one per request
        assert ask(model, adapter=None) == _engine_text(engine, None, 12)  # None = the base model
    finally:
        model.llm.close()


def test_from_pretrained_is_lorallm_with_base(tiny_llm: dict[str, Path], lora_model: LoRAModel) -> None:
    old = LoRALLM.from_pretrained(tiny_llm["base"], {"alpha": tiny_llm["alpha"]}, max_tokens=12, adapter="alpha")
    new = LoRALLM(base=tiny_llm["base"], adapters={"alpha": tiny_llm["alpha"]}, max_tokens=12, adapter="alpha")
    try:
        assert old.complete(QUESTION).text == new.complete(QUESTION).text == _engine_text(lora_model, "alpha", 12)
    finally:
        old.llm.close()
        new.llm.close()


@pytest.mark.parametrize("face", list(FACES))
def test_loading_options_are_checked_before_loading(
    face: str, tiny_llm: dict[str, Path], lora_model: LoRAModel
) -> None:
    cls = FACES[face][0]
    missing = tiny_llm["base"] / "does-not-exist"  # each error below comes before any attempt to load it
    with pytest.raises(UnknownAdapterError, match=r"'gamma'.*alpha"):
        cls(base=missing, adapters={"alpha": tiny_llm["alpha"]}, adapter="gamma")
    with pytest.raises(InvalidInputError, match="dtype"):
        cls(base=missing, dtype="float8")
    with pytest.raises(InvalidInputError, match=r"device='cpu' contradicts load=LoadConfig\(device='cuda'\)"):
        cls(base=missing, device="cpu", load=LoadConfig(device="cuda"))
    with pytest.raises(InvalidInputError, match="needs base="):
        cls()
    with pytest.raises(InvalidInputError, match=r"llm= and base=, device=.*not both"):
        cls(llm=lora_model, base=missing, device="cpu")
    with pytest.raises(InvalidInputError, match="LoRAModel"):
        cls(llm=str(tiny_llm["base"]))
    with pytest.raises(UnknownAdapterError, match="'gamma'"):
        cls(llm=lora_model, adapter="gamma")


# -- generation settings: the frameworks' names, honoured ---------------------------------------------------
@pytest.mark.parametrize(("face", "name"), BUDGET_NAMES)
def test_a_token_budget_at_construction_caps_generation(
    face: str, name: str, lora_model: LoRAModel, tokenizer: Any
) -> None:
    cls, ask, _ = FACES[face]
    uncapped = ask(cls(llm=lora_model, max_new_tokens=64))
    assert _tokens(tokenizer, uncapped) > 8  # without the cap the tiny model writes on
    capped = ask(cls(llm=lora_model, **{name: 8}))
    assert _tokens(tokenizer, capped) == 8 and uncapped.startswith(capped)  # greedy: the same first 8 tokens


@pytest.mark.parametrize(("face", "name"), BUDGET_NAMES)
def test_a_token_budget_per_call_caps_generation(face: str, name: str, lora_model: LoRAModel, tokenizer: Any) -> None:
    cls, ask, _ = FACES[face]
    assert _tokens(tokenizer, ask(cls(llm=lora_model, max_tokens=64), **{name: 5})) == 5


def test_max_tokens_caps_streams_too(lora_model: LoRAModel, tokenizer: Any) -> None:
    chat = ChatLoRA(llm=lora_model, max_tokens=6)
    assert _tokens(tokenizer, "".join(str(c.content) for c in chat.stream(QUESTION))) == 6
    llm = LoRALLM(llm=lora_model, max_tokens=6)
    assert _tokens(tokenizer, "".join(r.delta or "" for r in llm.stream_complete(QUESTION))) == 6


@pytest.mark.parametrize("face", list(FACES))
def test_settings_reach_the_engine_and_a_per_call_value_wins(
    face: str, lora_model: LoRAModel, monkeypatch: pytest.MonkeyPatch
) -> None:
    cls, ask, _ = FACES[face]
    seen = _record_configs(lora_model, monkeypatch)
    model = cls(llm=lora_model, max_tokens=5, temperature=0.7, top_p=0.9, stop=["zz"])
    ask(model)
    ask(model, max_tokens=3, temperature=0.0, stop=["yy"])
    ask(model, max_new_tokens=4, top_p=0.5)
    assert seen == [
        GenerationConfig(max_new_tokens=5, temperature=0.7, top_p=0.9, stop=("zz",)),
        GenerationConfig(max_new_tokens=3, temperature=0.0, top_p=0.9, stop=("yy",)),
        GenerationConfig(max_new_tokens=4, temperature=0.7, top_p=0.5, stop=("zz",)),
    ]
    assert model.max_tokens == model.max_new_tokens == 5


@pytest.mark.parametrize("face", list(FACES))
def test_a_stop_sequence_at_construction_ends_the_answer(face: str, lora_model: LoRAModel) -> None:
    cls, ask, _ = FACES[face]
    full = _engine_text(lora_model, None, 12)
    stop = full[3:6]
    assert ask(cls(llm=lora_model, max_tokens=12, stop=[stop])) == full[: full.find(stop)]


def test_chat_lora_reports_its_settings_to_langchain(lora_model: LoRAModel) -> None:
    chat = ChatLoRA(llm=lora_model, max_tokens=7, temperature=0.2, stop=["zz"])
    params = chat._get_ls_params()
    assert (params["ls_provider"], params["ls_max_tokens"], params["ls_temperature"]) == ("ragplug", 7, 0.2)
    assert params["ls_stop"] == ["zz"]
    assert chat._get_ls_params(max_tokens=3)["ls_max_tokens"] == 3
    assert LoRALLM(llm=lora_model, max_tokens=7).metadata.num_output == 7


# -- refused: two names for one setting, unknown keywords ----------------------------------------------------
@pytest.mark.parametrize("face", list(FACES))
def test_two_names_for_the_token_budget_are_refused(
    face: str, lora_model: LoRAModel, tiny_llm: dict[str, Path]
) -> None:
    cls, ask, names = FACES[face]
    for first, second in itertools.pairwise(names):
        pattern = rf"{first} and {second} name the same setting"
        with pytest.raises(InvalidInputError, match=pattern):
            cls(llm=lora_model, **{first: 8, second: 8})
        with pytest.raises(InvalidInputError, match=pattern):
            cls(base=tiny_llm["base"] / "does-not-exist", **{first: 8, second: 16})  # before loading
        with pytest.raises(InvalidInputError, match=pattern):
            ask(cls(llm=lora_model), **{first: 8, second: 16})


@pytest.mark.parametrize("face", list(FACES))
def test_unknown_keywords_are_refused_with_the_accepted_ones(face: str, tiny_llm: dict[str, Path]) -> None:
    cls = FACES[face][0]
    missing = tiny_llm["base"] / "does-not-exist"  # refused before loading
    with pytest.raises(InvalidInputError, match=r"'frequency_penalty'.*accepts: .*max_tokens.*temperature") as err:
        cls(base=missing, frequency_penalty=1.0)
    assert re.search(r"\badapters\b.*\bbase\b.*\bdevice\b.*\bdtype\b", str(err.value))
    with pytest.raises(InvalidInputError, match=r"'max_token' \(did you mean 'max_tokens'\?\)"):
        cls(base=missing, max_token=8)
    with pytest.raises(InvalidInputError, match=r"'adaptor' \(did you mean 'adapter'\?\)"):
        cls(base=missing, adaptor="alpha")


def test_langchain_fields_stay_accepted(lora_model: LoRAModel) -> None:
    class Tokens(BaseCallbackHandler):
        def __init__(self) -> None:
            self.tokens: list[str] = []

        def on_llm_new_token(self, token: str, **kwargs: Any) -> None:
            self.tokens.append(token)

    handler = Tokens()
    chat = ChatLoRA(
        llm=lora_model,
        max_tokens=6,
        callbacks=[handler],
        tags=["local"],
        metadata={"app": "carol"},
        name="carol-chat",
        streaming=True,  # LangChain's flag: invoke() streams internally, so the handler sees tokens
        timeout=30,  # hosted-model settings: accepted, no effect on a local model
        max_retries=2,
        api_key="unused",
    )
    answer = chat.invoke(QUESTION).content
    assert (chat.tags, chat.metadata is not None and chat.metadata["app"], chat.name) == (
        ["local"],
        "carol",
        "carol-chat",
    )
    assert handler.tokens and "".join(handler.tokens) == answer


def test_chat_lora_rebuilds_from_its_own_fields(lora_model: LoRAModel) -> None:
    """LangChain's configurable_fields rebuilds the model from its fields: they must all be accepted keywords."""
    chat = ChatLoRA(llm=lora_model, max_tokens=12)
    configurable = chat.configurable_fields(max_new_tokens=ConfigurableField(id="budget"))
    answer = configurable.invoke(QUESTION, config={"configurable": {"budget": 3}})
    assert answer.usage_metadata is not None and answer.usage_metadata["output_tokens"] == 3


def test_llamaindex_fields_stay_accepted(lora_model: LoRAModel) -> None:
    manager = CallbackManager([])
    llm = LoRALLM(llm=lora_model, max_tokens=6, system_prompt="Answer briefly.", callback_manager=manager)
    assert llm.callback_manager is manager
    expected = lora_model.chat(
        [{"role": "system", "content": "Answer briefly."}, {"role": "user", "content": QUESTION}],
        config=GenerationConfig(max_new_tokens=6),
    ).content
    assert llm.predict(PromptTemplate(QUESTION)) == expected  # LlamaIndex adds the system prompt
