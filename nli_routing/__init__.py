"""nli_routing: routing networks for natural language inference on the Hugging Face stack."""

__version__ = "0.1.0"

# the learned dispatchers register their rebuilder with the models layer, so that
# AutoModel.from_pretrained / from_pretrained restore a saved model's dispatcher
from .dispatch import learned as _learned_dispatchers  # noqa: E402,F401
