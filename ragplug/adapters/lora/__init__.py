"""Local LLMs with named LoRA adapters (transformers + peft), framework-free.

Needs ``pip install "ragplug[lora]"``. Importing this package does not import torch; constructing a
:class:`LoRAModel` does.
"""

from ragplug.adapters.lora.chat import chat_options
from ragplug.adapters.lora.chat_function import lora_chat_function
from ragplug.adapters.lora.config import GenerationConfig, LoadConfig, stop_sequences
from ragplug.adapters.lora.engine import LoRAModel
from ragplug.adapters.lora.requests import ChatOptions, ChatResult, GenerationRequest, GenerationResult
from ragplug.adapters.lora.tools import ToolCall, ToolSpec, parse_tool_calls
from ragplug.adapters.lora.train import TrainConfig, TrainExample, TrainResult, build_messages, train_lora

__all__ = [
    "ChatOptions",
    "ChatResult",
    "GenerationConfig",
    "GenerationRequest",
    "GenerationResult",
    "LoRAModel",
    "LoadConfig",
    "ToolCall",
    "ToolSpec",
    "TrainConfig",
    "TrainExample",
    "TrainResult",
    "build_messages",
    "chat_options",
    "lora_chat_function",
    "parse_tool_calls",
    "stop_sequences",
    "train_lora",
]
