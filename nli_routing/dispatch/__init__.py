"""nli_routing.dispatch."""
