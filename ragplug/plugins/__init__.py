"""Framework glue: thin wrappers that convert ragplug's results into LangChain and LlamaIndex types."""
