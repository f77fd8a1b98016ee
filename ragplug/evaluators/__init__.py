"""Evaluators: retrieval and answer metrics, LLM judges, datasets, a batch runner, reports, and the RAG vs LoRA
experiment. Needs ``pip install "ragplug[eval]"`` for metrics and reports. Names are imported on first use."""
