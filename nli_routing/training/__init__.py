"""nli_routing.training."""
