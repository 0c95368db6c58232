"""nli_routing.routing."""
