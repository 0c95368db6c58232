"""The project's evaluate modules load from their local path, offline, and compute the known answers."""

import evaluate
import pytest

from nli_routing.metrics import METRICS, load_metric, metric_path


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")


def test_every_shipped_module_loads_offline_by_path():
    for name in METRICS:
        module = evaluate.load(metric_path(name))
        assert module.name == name


def test_accuracy_per_meta():
    metric = load_metric("accuracy_per_meta")
    out = metric.compute(predictions=[0, 1, 1, 2], references=[0, 1, 0, 2], meta=[0, 0, 2, 2],
                         meta_names=["fiction", "slate", "travel"])
    assert out["accuracy"] == 0.75
    assert out["accuracy_per_meta"] == {"fiction": 1.0, "travel": 0.5}
    assert out["count_per_meta"] == {"fiction": 2, "travel": 2}
    metric.add_batch(predictions=[1], references=[1], meta=[1])  # batched use, default names
    assert metric.compute()["accuracy_per_meta"] == {"1": 1.0}


def test_routing_entropy_matches_library():
    out = load_metric("routing_entropy").compute(actions=[[0, 1], [1, 1]], meta=[0, 1], num_actions=2)
    assert out["per_depth"] == pytest.approx([1.0, 0.0])
    assert out["overall"] == pytest.approx(0.5) and out["per_meta"] == pytest.approx(0.0)


def test_path_overlap_module():
    out = load_metric("path_overlap").compute(
        actions=[[0, 1, 2], [0, 1, 2], [0, 1, 3], [2, 2, -1]], meta=[0, 0, 1, 2], meta_names=["a", "b", "c"]
    )
    ov = {(r, c): out["overlap"][i][j] for i, r in enumerate(out["classes"]) for j, c in enumerate(out["classes"])}
    assert ov["a", "a"] == 3 and ov["a", "b"] == 2 and ov["a", "c"] == 0 and ov["c", "c"] == 2
    assert out["dominant_paths"]["c"] == [2, 2, -1] and out["share"]["a"] == 1.0


def test_hub_name_is_not_needed():
    with pytest.raises(ValueError, match="unknown metric"):
        metric_path("accuracy")
