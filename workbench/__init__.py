"""contrast-workbench: preference optimisation and contrastive fine-tuning of LLMs and embedding models."""

__version__ = "0.1.0"
