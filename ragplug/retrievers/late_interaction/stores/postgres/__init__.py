"""The Postgres + pgvector multi-vector store (extra ``postgres``): :class:`PgVectorStore`."""

from ragplug.retrievers.late_interaction.stores.postgres.store import HNSWConfig, PgSearchOptions, PgVectorStore

__all__ = ["HNSWConfig", "PgSearchOptions", "PgVectorStore"]
