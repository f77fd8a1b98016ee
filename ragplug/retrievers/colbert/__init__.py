"""ColBERT text encoders (Stanford / colbert-ai and PyLate checkpoints, plain HF encoders) and chunking.

Importing this package does not import torch; :class:`ColBERTEncoder` does when constructed.
"""

from ragplug.retrievers.colbert.checkpoint import CheckpointFormat, ColBERTSettings
from ragplug.retrievers.colbert.encoder import DEFAULT_MODEL, ColBERTEncoder, TokenWindowChunker

__all__ = ["DEFAULT_MODEL", "CheckpointFormat", "ColBERTEncoder", "ColBERTSettings", "TokenWindowChunker"]
