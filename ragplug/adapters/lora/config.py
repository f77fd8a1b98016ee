"""Typed settings of the local LLM: generation parameters and loading options, checked at construction."""

from __future__ import annotations

from collections.abc import MutableMapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from ragplug.errors import InvalidInputError

__all__ = ["GenerationConfig", "LoadConfig", "pop_setting", "stop_sequences"]


def stop_sequences(stop: str | Sequence[str] | None) -> tuple[str, ...]:
    """Stop sequences as :class:`GenerationConfig` takes them: one string is one stop sequence (as in the
    OpenAI API), never split into characters; None is none. The items are checked by GenerationConfig."""
    if stop is None:
        return ()
    if isinstance(stop, str):
        return (stop,)
    if isinstance(stop, bytes) or not isinstance(stop, Sequence | set | frozenset):
        msg = f"stop must be a string or a sequence of strings, got {stop!r}"
        raise InvalidInputError(msg)
    return tuple(stop)


def pop_setting(options: MutableMapping[str, Any], names: Sequence[str], default: Any) -> Any:
    """Pop the value ``options`` gives for one setting under any of its ``names`` (e.g. ``max_new_tokens`` /
    ``max_tokens``); ``default`` when none is given. None counts as not given. Two names given is an error."""
    given = [name for name in names if options.get(name) is not None]
    if len(given) > 1:
        values = ", ".join(f"{name}={options[name]!r}" for name in given)
        msg = f"{' and '.join(given)} name the same setting; pass only one of them (got {values})"
        raise InvalidInputError(msg)
    value = options[given[0]] if given else default
    for name in names:
        options.pop(name, None)
    return value


@dataclass(frozen=True)
class GenerationConfig:
    """How one request is decoded."""

    max_new_tokens: int = field(default=256, metadata={"help": "upper bound on generated tokens"})
    temperature: float = field(default=0.0, metadata={"help": "0 = greedy decoding"})
    top_p: float = field(default=1.0, metadata={"help": "nucleus sampling mass (with temperature > 0)"})
    stop: tuple[str, ...] = field(default=(), metadata={"help": "strings that end the answer (not included)"})

    def __post_init__(self) -> None:
        if isinstance(self.max_new_tokens, bool) or not isinstance(self.max_new_tokens, int) or self.max_new_tokens < 1:
            msg = f"max_new_tokens must be a positive integer, got {self.max_new_tokens!r}"
            raise InvalidInputError(msg)
        if not isinstance(self.temperature, int | float) or self.temperature < 0:
            msg = f"temperature must be a number >= 0, got {self.temperature!r}"
            raise InvalidInputError(msg)
        if not isinstance(self.top_p, int | float) or not 0 < self.top_p <= 1:
            msg = f"top_p must be in (0, 1], got {self.top_p!r}"
            raise InvalidInputError(msg)
        if isinstance(self.stop, str):  # never split into characters
            msg = (
                f"stop must be a sequence of non-empty strings; for the one stop string {self.stop!r} "
                f"pass ({self.stop!r},)"
            )
            raise InvalidInputError(msg)
        if not all(isinstance(s, str) and s for s in self.stop):
            msg = f"stop must be a sequence of non-empty strings, got {self.stop!r}"
            raise InvalidInputError(msg)
        object.__setattr__(self, "stop", tuple(self.stop))

    @property
    def sampling_key(self) -> tuple[bool, float, float]:
        """Requests with equal keys can share one ``generate`` call."""
        do_sample = self.temperature > 0
        return (do_sample, float(self.temperature) if do_sample else 0.0, float(self.top_p) if do_sample else 1.0)


@dataclass(frozen=True)
class LoadConfig:
    """How the base model is loaded and served."""

    dtype: str = field(
        default="auto",
        metadata={
            "help": "'auto' (bf16 on GPU, fp32 on CPU), float32, bfloat16, float16; on CPUs with AMX or "
            "AVX512-BF16, bfloat16 decodes ~2.6x faster than float32 (benchmarks/results/lora_serving.md)"
        },
    )
    device: str | None = field(default=None, metadata={"help": "cpu / cuda / cuda:N; default cuda when available"})
    device_map: str | dict[str, int | str] | None = field(default=None, metadata={"help": "accelerate device map"})
    quantization: Literal["4bit", "8bit"] | None = field(default=None, metadata={"help": "bitsandbytes, GPU only"})
    max_batch_size: int = field(default=8, metadata={"help": "requests gathered into one generate call"})
    batch_window_ms: float = field(default=5.0, metadata={"help": "how long the scheduler waits to fill a batch"})
    truncation: Literal["error", "left"] = field(
        default="error",
        metadata={"help": "prompt longer than the context: raise ContextLengthError, or drop the oldest tokens"},
    )
    idle_exit_s: float | None = field(
        default=2.0,
        metadata={
            "help": "the scheduler thread ends after this many seconds without requests and restarts on the next "
            "(an idle thread that ran torch slows other threads' CPU work); None keeps it"
        },
    )
    mixed_lora: Literal["segmented", "peft"] = field(
        default="segmented",
        metadata={
            "help": "how rows with different adapters share a forward pass: 'segmented' (stacked weights, two "
            "matmuls per layer; falls back to peft for DoRA and other variants) or 'peft' (peft's adapter_names loop)"
        },
    )

    def __post_init__(self) -> None:
        if self.dtype not in ("auto", "float32", "bfloat16", "float16"):
            msg = f"dtype must be auto, float32, bfloat16 or float16, got {self.dtype!r}"
            raise InvalidInputError(msg)
        if self.quantization not in (None, "4bit", "8bit"):
            msg = f"quantization must be None, '4bit' or '8bit', got {self.quantization!r}"
            raise InvalidInputError(msg)
        if not isinstance(self.max_batch_size, int) or self.max_batch_size < 1:
            msg = f"max_batch_size must be a positive integer, got {self.max_batch_size!r}"
            raise InvalidInputError(msg)
        if not isinstance(self.batch_window_ms, int | float) or self.batch_window_ms < 0:
            msg = f"batch_window_ms must be >= 0, got {self.batch_window_ms!r}"
            raise InvalidInputError(msg)
        if self.truncation not in ("error", "left"):
            msg = f"truncation must be 'error' or 'left', got {self.truncation!r}"
            raise InvalidInputError(msg)
        if self.idle_exit_s is not None and (
            isinstance(self.idle_exit_s, bool)
            or not isinstance(self.idle_exit_s, int | float)
            or not 0 < self.idle_exit_s < 1e6
        ):
            msg = f"idle_exit_s must be a positive number of seconds or None, got {self.idle_exit_s!r}"
            raise InvalidInputError(msg)
        if self.mixed_lora not in ("segmented", "peft"):
            msg = f"mixed_lora must be 'segmented' or 'peft', got {self.mixed_lora!r}"
            raise InvalidInputError(msg)
