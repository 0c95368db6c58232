"""nli_routing.data: SCI (``sci``), MultiNLI (``multinli``), the implicative generator, encoding."""
