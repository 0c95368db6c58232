"""nli_routing: routing networks for natural language inference on the Hugging Face stack."""

__version__ = "0.1.0"


