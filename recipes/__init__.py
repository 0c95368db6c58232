"""The recipes: one runnable script per experiment (``accelerate launch recipes/<name>.py`` or
``python -m recipes.<name>``). A package so that tests and benchmarks import a recipe by name,
never by file path."""
