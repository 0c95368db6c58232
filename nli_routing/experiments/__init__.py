"""Experiment code shared by the recipes and the benchmarks: the SCI / MultiNLI methods and their data
(``nli``: ``METHODS``, ``prepare_sci``, ``run_method``, ...) and fine-tuning routed Transformers
(``transformer``: ``train_transformer``). The top layer of the library: it imports everything below."""
