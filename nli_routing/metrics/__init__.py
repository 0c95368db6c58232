"""nli_routing.metrics."""
