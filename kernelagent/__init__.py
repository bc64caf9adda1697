"""kernelagent: an LLM data-analysis agent whose every session is a sandboxed Jupyter kernel."""

__version__ = "0.1.0"

__all__ = ["__version__"]
