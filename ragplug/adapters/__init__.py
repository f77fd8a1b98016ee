"""Local LLMs with adapters (framework-free)."""
