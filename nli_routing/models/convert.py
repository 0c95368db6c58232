"""Convert a run folder of an older nli_routing (``model_config.json`` + ``model.pt``) into a saved
model folder (``config.json`` + ``model.safetensors``) that ``from_pretrained`` loads.

    nli-routing convert OLD_RUN_DIR OUT_DIR

``model.pt`` is read weights-only (tensors and plain containers; anything else is refused), so
converting a downloaded folder runs no code from it. The model kind follows from the config's fields
(``lstm_route``: LSTM, ``method``: vision, otherwise CBOW); the word-vector table's shape from the
weights.
"""

from __future__ import annotations

import json
from pathlib import Path

from ..serialization import CheckpointError, load_state_dict
from .base import LEGACY_WEIGHTS_FILE, RoutedModel

__all__ = ["convert_run_folder"]

LEGACY_CONFIG_FILE = "model_config.json"


def convert_run_folder(src: str | Path, dst: str | Path, pad_id: int = 0) -> RoutedModel:
    """Read ``src/model_config.json`` and ``src/model.pt``, write ``dst`` with ``save_pretrained``
    and return the model (``pad_id``: the padding token of the run's vocabulary, 0 in every recipe)."""
    from .lstm import LSTMModelConfig, LSTMNLIModel
    from .nli import NLIModelConfig, NLIRoutingModel
    from .vision import VisionMTLConfig, VisionMTLModel

    src, dst = Path(src), Path(dst)
    config_file, weights = src / LEGACY_CONFIG_FILE, src / LEGACY_WEIGHTS_FILE
    for f in (config_file, weights):
        if not f.is_file():
            raise FileNotFoundError(f"{f} does not exist: not a run folder of an older nli_routing "
                                    f"({LEGACY_CONFIG_FILE} + {LEGACY_WEIGHTS_FILE})")
    try:
        values = json.loads(config_file.read_text())
    except json.JSONDecodeError as err:
        raise CheckpointError(f"{config_file} is truncated or not JSON: {err}") from None
    if not isinstance(values, dict):
        raise CheckpointError(f"{config_file} holds a {type(values).__name__}, not the model's settings")
    lstm, vision = "lstm_route" in values, "method" in values and "lstm_route" not in values
    settings_class = LSTMModelConfig if lstm else VisionMTLConfig if vision else NLIModelConfig
    try:
        settings = settings_class(**values)
    except (TypeError, ValueError) as err:  # an unknown, missing or bad field
        raise CheckpointError(f"{config_file}: {err}") from None
    state = load_state_dict(weights)
    if vision:
        model = VisionMTLModel(settings)
    else:
        key = "encoder.embedding.weight"
        if key not in state:
            raise CheckpointError(f"{weights} has no {key}: not the weights of the model in {config_file}")
        vocab = int(state[key].shape[0])
        if not 0 <= pad_id < vocab:
            raise ValueError(f"--pad_id {pad_id} is outside the vocabulary of {weights} (ids 0..{vocab - 1})")
        model = (LSTMNLIModel if lstm else NLIRoutingModel)(settings, state[key].clone(), pad_id=pad_id)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as err:
        first = (str(err).splitlines() or [""])[0]
        raise CheckpointError(f"{weights} does not match the model of {config_file}: {first}") from None
    model.save_pretrained(dst)
    return model
