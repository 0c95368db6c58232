"""nli_routing.data."""
