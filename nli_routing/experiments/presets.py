"""Named sets of recipe settings: ``--preset thesis`` runs the thesis' configuration in one flag.

Each entry is ``flag -> (value, where the seeds state it)``. A preset fills the recipe's defaults, so a
flag given on the command line still wins; the recipe prints the settings it applied. Settings the
seeds do not state are left at the library's defaults and listed in :data:`NOT_IN_PRESET`.
"""

from __future__ import annotations

from typing import Any

__all__ = ["NOT_IN_PRESET", "PRESETS", "preset_values"]

#: SCI and MultiNLI (CBOW, LSTM and their routed parts; the learned dispatchers)
THESIS_NLI: dict[str, tuple[Any, str]] = {
    "pair_features": ("concat", "the thesis' classifier reads [p; h] (README 'Defaults that differ from the thesis')"),
    "classifier_layers": (3, "three hidden classifier layers (README 'Defaults that differ from the thesis')"),
    "classifier_hidden": (600, "600 units each (README 'Defaults that differ from the thesis')"),
    "classifier_paths": ("set", "thesis 5.3.1.1: 'choose any path through this set up to a maximum length d' "
                                "(issue 32; a stop action ends a path)"),
    "wp_width": (15, "thesis Tables 5.2 and 6.1: b = 15 (issue 32)"),
    "wp_depth": (3, "thesis Tables 5.2 and 6.1: d = 3 (issue 32)"),
    "wp_residual": (False, "the gated residual x + g relu(Wx) is the library's, not the thesis' WP (issue 32)"),
    "learner": ("qlearning", "'vanilla q-learning ... following [Watkins, 1989]' (issue 32)"),
    "learner_args": ("target=td,ties=random,batch_mean=state-action",
                     "Watkins' one-step target (issue 32); one update per visited entry; ties not stated, "
                     "uniform (README 'Defaults that differ from the thesis')"),
    "router_balance_share": (1.0, "no capacity balance (README 'Defaults that differ from the thesis')"),
    "block_optimizer": ("sgd", "SGD (README 'Defaults that differ from the thesis')"),
    "lr": (0.05, "the rate of the README row's thesis flags; the seeds do not state one"),
    "dispatch_target": ("reward", "the RL reward of the model's outcome (README 'Defaults that differ from the thesis')"),
    "dispatch_input": ("premise", "the premise only (README 'Defaults that differ from the thesis')"),
    "dispatch_balance": (0.0, "RL reward only, no mutual-information term (README 'Defaults that differ from the thesis')"),
    "dispatch_agent_optimizer": ("routers", "the agent trains with the routers (README 'Defaults that differ from the thesis')"),
    "dispatch_warm_start": (False, "a new dispatcher for the nested data (README 'Defaults that differ from the thesis')"),
    "dispatch_cbow_pool": ("sum", "thesis eq. 6.4: RBAE-CBOW sums the word vectors (issue 32)"),
    "dispatch_state_norm": (False, "the agent reads the encoding as it is, and RBAE-seq's encoder learns from the "
                                   "reconstruction only (README 'Defaults that differ from the thesis')"),
    "meta_keyword_mode": ("tokens", "thesis 5.3.2: 'special keywords put in front of each sentence before encoding' "
                                    "(issue 32)"),
}

#: image multi-task learning (MNIST-MTL, CIFAR-MTL)
THESIS_IMAGE: dict[str, tuple[Any, str]] = {
    "learner": ("wpl", "the thesis' image runs use WPL (issue 32)"),
    "block_optimizer": ("sgd", "SGD at 1e-2 (issue 32)"),
    "lr": (0.01, "SGD at 1e-2 (issue 32)"),
    "router_lr_ratio": (1.0, "one rate for blocks and routers (assumed: the seeds name one SGD rate)"),
    "rho": (0.3, "rho = 0.3 on MNIST-MTL (issue 32)"),
    "lr_step_epochs": (20, "SGD's rate annealed by 10 every 20 epochs (issue 32)"),
    "lr_step_factor": (10.0, "SGD's rate annealed by 10 every 20 epochs (issue 32)"),
}

PRESETS: dict[str, dict[str, dict[str, tuple[Any, str]]]] = {
    "thesis": {"nli": THESIS_NLI, "image": THESIS_IMAGE},
}

#: thesis settings a preset cannot set yet, or that the seeds do not state (issue 32)
NOT_IN_PRESET = {
    "nli": [
        "the exploration schedule of Tables 5.2 / 6.1 (not stated; Figure 7.6's are --exploration thesis-high/med/low)",
        "the router learning rate and the table start (not stated)",
    ],
    "image": [
        "routing the final output layer in routing-all-fc (the library keeps per-task heads)",
    ],
}


def preset_values(name: str, family: str, known: set[str]) -> dict[str, Any]:
    """The values of preset ``name`` for a recipe of ``family`` (``nli`` / ``image``), limited to the flags
    the recipe has (``known``: its parser's destinations)."""
    if name not in PRESETS:
        raise ValueError(f"--preset must be one of {sorted(PRESETS)}, got {name!r}")
    return {k: v for k, (v, _) in PRESETS[name][family].items() if k in known}
