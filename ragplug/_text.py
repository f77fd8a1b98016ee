"""Text checks shared by every role (retrieval, the local LLM, training); no heavy imports."""

from __future__ import annotations

from ragplug.errors import InvalidInputError

__all__ = ["check_unicode", "unicode_error"]


def unicode_error(text: str, what: str) -> InvalidInputError | None:
    """The error for ``text`` if it is not valid Unicode (a lone surrogate, which no UTF-8 file, database or
    tokenizer accepts), naming ``what`` and the position; None when it is valid."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as err:
        msg = (
            f"{what} holds a lone surrogate {text[err.start : err.end]!r} at position {err.start}: it is not "
            "valid Unicode; decode the text with errors='replace' (or fix its source)"
        )
        return InvalidInputError(msg)
    return None


def check_unicode(text: str, what: str) -> str:
    """``text`` unchanged when it is valid Unicode, else the :func:`unicode_error`."""
    error = unicode_error(text, what)
    if error is not None:
        raise error
    return text
