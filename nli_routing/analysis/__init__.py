"""nli_routing.analysis."""
