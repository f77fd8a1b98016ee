"""Retrieval engines, framework-free (numpy / torch / psycopg only; never langchain or llama_index)."""
