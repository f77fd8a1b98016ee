"""ColPali page retrieval: page encoders on colpali-engine (every family it ships, read from the checkpoint's
config), for the same late-interaction engine and stores as ColBERT.

Importing this package does not import torch, transformers or colpali-engine; :class:`ColPaliEncoder` does
when constructed. A missing ``colpali`` extra raises :class:`~ragplug.errors.MissingExtraError` then.
"""

from ragplug.retrievers.colpali.encoder import DEFAULT_MODEL, ColPaliEncoder, Family, default_dtype

__all__ = ["DEFAULT_MODEL", "ColPaliEncoder", "Family", "default_dtype"]
