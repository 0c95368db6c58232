"""Non-tensor state saved as JSON + tensors (no pickles), and back."""

import json

import pytest
import torch

from nli_routing.serialization import join_state, split_state


def test_nested_state_round_trips_through_json_and_tensors():
    state = {"r.extra": {"epoch": 3, "generator": torch.Generator().manual_seed(5).get_state(),
                         "shares": [torch.ones(2), 0.5], "pair": (1, None, "x")}}
    structure, tensors = split_state(state, prefix="e.")
    json.dumps(structure)  # plain JSON
    assert set(tensors) == {"e.0", "e.1"}
    back = join_state(json.loads(json.dumps(structure)), tensors)
    assert back["r.extra"]["epoch"] == 3 and back["r.extra"]["pair"] == (1, None, "x")
    assert torch.equal(back["r.extra"]["generator"], state["r.extra"]["generator"])
    assert torch.equal(back["r.extra"]["shares"][0], torch.ones(2)) and back["r.extra"]["shares"][1] == 0.5


def test_an_object_that_is_not_plain_data_is_named():
    with pytest.raises(TypeError, match="'a.b' is a object"):
        split_state({"a": {"b": object()}})
    with pytest.raises(TypeError, match="non-string keys"):
        split_state({"a": {1: 2}})
