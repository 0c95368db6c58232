"""nli_routing.models."""
