"""The one chat entry point: ChatOptions (or its fields as keywords) into LoRAModel.chat and its twins, and
chat_options, which both framework wings use to read a call's keywords over their defaults."""

from __future__ import annotations

import pytest

from ragplug.adapters.lora import ChatOptions, GenerationConfig, LoRAModel, ToolSpec, chat_options
from ragplug.errors import InvalidInputError, UnknownAdapterError

MESSAGES = [{"role": "user", "content": "Who is Scrooge?"}]
SHORT = GenerationConfig(max_new_tokens=10)
SEARCH = ToolSpec("search", "search the book", {"type": "object", "properties": {"q": {"type": "string"}}})


async def test_options_and_keywords_are_one_signature(lora_model: LoRAModel) -> None:
    options = ChatOptions(adapter="alpha", config=SHORT)
    by_options = lora_model.chat(MESSAGES, options)
    assert by_options == lora_model.chat(MESSAGES, adapter="alpha", config=SHORT)
    assert by_options == await lora_model.achat(MESSAGES, options)
    streamed = list(lora_model.stream_chat(MESSAGES, options))
    assert streamed[-1] == by_options and "".join(streamed[:-1]) == by_options.content
    items = [item async for item in lora_model.astream_chat(MESSAGES, options)]
    assert items[-1] == by_options
    # a keyword replaces that field of the options it comes with
    assert lora_model.chat(MESSAGES, options, adapter="beta") == lora_model.chat(MESSAGES, adapter="beta", config=SHORT)


def test_bad_options_fail_at_the_call(lora_model: LoRAModel) -> None:
    with pytest.raises(InvalidInputError, match="unexpected arguments"):
        lora_model.chat(MESSAGES, temperature=0.5)
    with pytest.raises(InvalidInputError, match="ChatOptions"):
        lora_model.chat(MESSAGES, {"adapter": "alpha"})  # type: ignore[arg-type]
    with pytest.raises(InvalidInputError, match="GenerationConfig"):
        ChatOptions(config={"max_new_tokens": 3})  # type: ignore[arg-type]
    with pytest.raises(UnknownAdapterError):
        lora_model.stream_chat(MESSAGES, ChatOptions(adapter="nope"))  # before a generator is returned


def test_chat_options_reads_a_call_over_the_defaults() -> None:
    defaults = ChatOptions(adapter="alpha", config=GenerationConfig(64, 0.0, 1.0, ("END",)))
    assert chat_options({}, defaults, owner="X") == defaults
    options = chat_options(
        {"max_tokens": 8, "temperature": 0.7, "stop": "STOP", "adapter": None, "tools": [SEARCH.to_openai()]},
        defaults,
        owner="X",
    )
    assert options.config == GenerationConfig(8, 0.7, 1.0, ("STOP",))  # one string is one stop sequence
    assert options.adapter is None and options.tools == (SEARCH,)
    with pytest.raises(InvalidInputError, match="max_new_tokens and max_tokens name the same setting"):
        chat_options({"max_new_tokens": 4, "max_tokens": 5}, defaults, owner="X")
    with pytest.raises(InvalidInputError, match=r"unexpected arguments for X: \['seed'\]"):
        chat_options({"seed": 1}, defaults, owner="X")
    assert chat_options({"trace": 1}, defaults, owner="X", ignore=("trace",)) == defaults
    with pytest.raises(InvalidInputError, match="one stop string"):
        chat_options({"stop": "STOP"}, defaults, owner="X", single_stop=False)
    with pytest.raises(InvalidInputError, match="ToolSpec or OpenAI-style dicts"):
        chat_options({"tools": ["search"]}, defaults, owner="X")


def test_both_wings_build_the_same_options(lora_model: LoRAModel) -> None:
    from ragplug.plugins.langchain import ChatLoRA
    from ragplug.plugins.llamaindex import LoRALLM

    langchain = ChatLoRA(llm=lora_model, adapter="alpha", max_tokens=20, stop=["Z"])
    llamaindex = LoRALLM(llm=lora_model, adapter="alpha", max_new_tokens=20, stop=["Z"])
    call = {"max_tokens": 9, "temperature": 0.2, "tools": [SEARCH.to_openai()], "tool_choice": "search"}
    assert langchain._options(None, call) == llamaindex._options(call)
    assert langchain._options(["Q"], {"stop": ["R"]}).config.stop == ("Q",)  # LangChain's stop argument wins
