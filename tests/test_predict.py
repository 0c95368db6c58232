"""Inference on saved runs: every model kind (CBOW, LSTM, routed MiniLM; signature, offline-cluster and
learned dispatch) predicts from its run folder exactly what the training run recorded on its test
split (labels and routes), through the Python API, ``nli-routing predict`` and the ``routed-nli``
pipeline (in a fresh process)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import replace

import numpy as np
import pytest
import torch

from nli_routing.analysis.records import load_routing_record
from nli_routing.cli import main as cli
from nli_routing.experiments.nli import DataArgs, prepare_sci, run_method
from nli_routing.experiments.transformer import PairDataArgs, load_data, train_transformer
from nli_routing.inference import RoutedNLIPredictor
from nli_routing.models.nli import NLIModelConfig
from nli_routing.models.transformer import TransformerNLIConfig
from nli_routing.training.loop import TrainConfig

METHODS = ["cbow", "wp-signature", "wp-kmeans", "wp-basic", "lstm-h2h"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """One tiny training run per method (embedded SCI data, packaged MiniLM vectors) and a routed MiniLM."""
    root = tmp_path_factory.mktemp("runs")
    prepared = prepare_sci(DataArgs(max_train_samples=240))
    model_cfg = NLIModelConfig(classifier_hidden=32)
    train_cfg = TrainConfig(epochs=1, batch_size=32, lr=2e-3, block_optimizer="adam", router_lr_ratio=5.0, seed=0)
    for method in METHODS:
        run_method(method, prepared, model_cfg, train_cfg, 3, root / method)
    dsd, names = load_data(PairDataArgs(max_train_samples=48, max_eval_samples=40, max_length=48, allow_unseen_meta=True))
    tcfg = TransformerNLIConfig(route="attention", num_blocks=2, classifier_hidden=16)
    train_transformer(dsd, names, "signature", tcfg, replace(train_cfg, batch_size=16, lr=5e-5), 48, root / "minilm")
    return root, prepared, dsd


def pairs_of(split) -> list[dict]:
    names = split.features["signature"].names
    return [{"premise": r["premise"], "hypothesis": r["hypothesis"], "signature": names[r["signature"]]}
            for r in split.with_format(None)]


@pytest.mark.parametrize("method", METHODS + ["minilm"])
def test_predictions_equal_the_runs_own_test_records(runs, method):
    root, prepared, dsd = runs
    folder = root / method
    assert (folder / "tokenizer.json").exists() and (folder / "config.json").exists()
    split = (dsd if method == "minilm" else prepared.data)["test"]
    predictor = RoutedNLIPredictor.from_pretrained(folder)
    preds = predictor.predict(pairs_of(split), batch_size=50)
    record = load_routing_record(folder / "routing_test.npz")
    labels = [predictor.model.config.label2id[p["label"]] for p in preds]
    assert np.array_equal(np.asarray(labels), record.preds), f"{method}: labels differ from the run's test record"
    for layer in record.layers:
        for i, p in enumerate(preds):
            want = [("stop" if a == layer.stop_action else int(a)) for a in layer.actions[i] if a >= 0]
            assert p["route"][layer.name] == want, f"{method}, sample {i}, layer {layer.name}"
    metrics = json.loads((folder / "metrics.json").read_text())
    acc = float(np.mean(np.asarray(labels) == record.labels))
    assert acc == pytest.approx(metrics["final"]["test"]["accuracy"], abs=1e-6)
    source = {"cbow": "given", "wp-signature": "given", "wp-kmeans": "dispatched", "wp-basic": "dispatched",
              "lstm-h2h": "given", "minilm": "given"}[method]
    assert {p["meta_source"] for p in preds} == {source}
    if method == "wp-kmeans":  # the record keeps the data's signatures beside the clusters routed on
        assert record.meta_column == "cluster" and record.data_meta_column == "signature"
        assert np.array_equal(record.data_meta, np.asarray(split["signature"]))
    if method in ("wp-kmeans", "wp-basic"):
        assert all(p["dispatch"]["class"] == p["meta"] for p in preds)
        assert np.array_equal([predictor.meta_names.index(p["meta"]) for p in preds],
                              record.dispatch if record.dispatch is not None else record.meta)


def test_missing_meta_is_an_error_or_a_counted_fallback(runs):
    root, *_ = runs
    pair = {"premise": "Ann managed to leave.", "hypothesis": "Ann left."}
    with pytest.raises(ValueError, match=r"pair 0: this model routes on 'signature'.*\+\|-"):
        RoutedNLIPredictor.from_pretrained(root / "wp-signature").predict([pair])
    predictor = RoutedNLIPredictor.from_pretrained(root / "wp-signature", meta_fallback="+|-")
    out = predictor.predict([pair, {**pair, "signature": "no|such"}, {**pair, "meta": 0}])
    assert [o["meta_source"] for o in out] == ["fallback", "fallback", "given"] and predictor.fallbacks == 2
    # a dispatching model needs no meta
    assert RoutedNLIPredictor.from_pretrained(root / "wp-basic").predict(pair)[0]["meta_source"] == "dispatched"


def test_the_meta_source_is_part_of_the_model_and_the_predictor_tokenizes_each_text_once(runs):
    """Issue 30: the model picks its own meta (centroids, learned dispatcher) on the tokens it reads; the
    predictor has no dispatch of its own and tokenizes each premise and hypothesis exactly once."""
    root, prepared, _ = runs
    pairs = pairs_of(prepared.data["test"].select(range(12)))
    want = {"cbow": "given", "wp-signature": "given", "wp-kmeans": "centroids", "wp-basic": "learned", "lstm-h2h": "given"}
    for method, source in want.items():
        predictor = RoutedNLIPredictor.from_pretrained(root / method)
        assert predictor.model.meta_source == source, method
        texts = []
        tokenizer = predictor.tokenizer

        def counting(batch, *args, _inner=tokenizer.__class__.__call__, **kwargs):
            texts.extend([batch] if isinstance(batch, str) else batch)
            return _inner(tokenizer, batch, *args, **kwargs)

        predictor.tokenizer = type("Counting", (), {"__call__": staticmethod(counting)})()
        out = predictor.predict(pairs, batch_size=5)
        assert len(texts) == 2 * len(pairs), f"{method}: {len(texts)} texts tokenized for {len(pairs)} pairs"
        assert {o["meta_source"] for o in out} == {"dispatched" if source in ("centroids", "learned") else "given"}
    model = RoutedNLIPredictor.from_pretrained(root / "wp-kmeans").model
    batch = {k: v for k, v in RoutedNLIPredictor.from_pretrained(root / "wp-kmeans").encode(
        [p["premise"] for p in pairs], [p["hypothesis"] for p in pairs]).items()}
    out = model(**batch)
    assert out.meta_source == "centroids" and out.meta.shape == (len(pairs),)


def test_a_folder_with_its_centroids_in_config_json_loads_and_predicts_the_same(runs, tmp_path):
    """Folders saved before issue 30 kept the offline centroids as lists in config.json and not in the
    weights: they load (the centroids move into the model) and predict the same labels and routes."""
    import shutil

    from safetensors.torch import load_file, save_file

    root, prepared, _ = runs
    old = tmp_path / "old"
    shutil.copytree(root / "wp-kmeans", old)
    weights = load_file(str(old / "model.safetensors"))
    centroids = weights.pop("centroid_dispatch.centroids")
    save_file(weights, str(old / "model.safetensors"), metadata={"format": "pt"})
    cfg = json.loads((old / "config.json").read_text())
    cfg.pop("weights_sha256")  # (those folders had no checksum either)
    settings = cfg["offline_dispatch"]
    cfg["offline_dispatch"] = {"method": settings["method"], "k": settings["k"], "seed": settings["seed"],
                               "max_fit_samples": 2000, "centroids": centroids.double().tolist(), "dtype": "float32",
                               "text_column": "premise", "max_length": settings["max_length"]}
    (old / "config.json").write_text(json.dumps(cfg))
    pairs = pairs_of(prepared.data["test"])
    new = RoutedNLIPredictor.from_pretrained(root / "wp-kmeans").predict(pairs)
    loaded = RoutedNLIPredictor.from_pretrained(old)
    assert torch.equal(loaded.model.centroids.centroids, centroids)
    assert [(p["label"], p["route"], p["meta"]) for p in loaded.predict(pairs)] == [
        (p["label"], p["route"], p["meta"]) for p in new]


def test_a_saved_dispatcher_loads_without_the_dispatch_package(runs):
    """The model rebuilds its learned dispatcher itself: no registry, no side-effect import."""
    root, *_ = runs
    code = ("import sys; from transformers import AutoModel; import nli_routing.models\n"
            "m = AutoModel.from_pretrained(sys.argv[1]); print(m.meta_source, 'nli_routing.dispatch' in sys.modules)")
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    res = subprocess.run([sys.executable, "-c", code, str(root / "wp-basic")], capture_output=True, text=True, env=env,
                         timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    assert res.stdout.split()[-2:] == ["learned", "False"]


def test_automodel_loads_a_saved_folder_in_a_fresh_process_with_trust_remote_code(runs):
    """Issue 31: transformers' convention for custom models: ``config.auto_map`` names the classes and the
    folder's ``modeling_nli_routing.py`` imports them from the installed package; nothing of nli_routing
    is imported first. The logits equal those of the library's own loader."""
    root, *_ = runs
    code = ("import sys, json, torch; from transformers import AutoModel\n"
            "assert not [m for m in sys.modules if m.startswith('nli_routing')]\n"
            "m = AutoModel.from_pretrained(sys.argv[1], trust_remote_code=True)\n"
            "ids = torch.tensor([[5, 6, 7]]); mask = torch.ones(1, 3, dtype=torch.bool)\n"
            "out = m(premise_ids=ids, premise_mask=mask, hypothesis_ids=ids, hypothesis_mask=mask, meta=torch.tensor([0]))\n"
            "print(json.dumps([type(m).__name__, out.logits.tolist()]))")
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    for method in ("wp-signature", "wp-kmeans", "lstm-h2h"):
        folder = root / method
        assert json.loads((folder / "config.json").read_text())["auto_map"]["AutoModel"].startswith("modeling_nli_routing.")
        res = subprocess.run([sys.executable, "-c", code, str(folder)], capture_output=True, text=True, env=env,
                             timeout=300, cwd=str(folder.parent))
        assert res.returncode == 0, res.stderr[-2000:]
        name, logits = json.loads(res.stdout.strip().splitlines()[-1])
        model = RoutedNLIPredictor.from_pretrained(folder).model
        ids = torch.tensor([[5, 6, 7]])
        mask = torch.ones(1, 3, dtype=torch.bool)
        want = model(premise_ids=ids, premise_mask=mask, hypothesis_ids=ids, hypothesis_mask=mask, meta=torch.tensor([0]))
        assert name == type(model).__name__
        assert torch.allclose(torch.tensor(logits), want.logits, atol=1e-6)


def test_cli_predict_writes_one_line_per_pair(runs, tmp_path, capsys):
    root, prepared, _ = runs
    pairs = pairs_of(prepared.data["test"].select(range(7)))
    src = tmp_path / "pairs.jsonl"
    src.write_text("".join(json.dumps(p) + "\n" for p in pairs))
    out = tmp_path / "preds.jsonl"
    cli(["predict", str(root / "wp-signature"), "--input", str(src), "--output", str(out), "--batch_size", "3"])
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    api = RoutedNLIPredictor.from_pretrained(root / "wp-signature").predict(pairs, batch_size=3)
    assert rows == json.loads(json.dumps(api))  # the same batches: the same numbers
    cli(["predict", str(root / "wp-kmeans"), "--premise", "Ann managed to leave.", "--hypothesis", "Ann left."])
    one = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert one["meta_source"] == "dispatched" and set(one["route"]) == {"wp"}


def test_the_pipeline_in_a_fresh_process(runs):
    root, *_ = runs
    code = (
        "import json, sys; import nli_routing.inference.pipeline; from transformers import pipeline\n"
        "out = {}\n"
        "for m in sys.argv[1:]:\n"
        "    nli = pipeline('routed-nli', model=m)\n"
        "    out[m] = nli([{'text': 'Ann managed to leave.', 'text_pair': 'Ann left.', 'meta': '+|-'}], top_k=None)\n"
        "print(json.dumps(out))\n"
    )
    folders = [str(root / m) for m in ("wp-signature", "wp-basic", "lstm-h2h", "minilm")]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    res = subprocess.run([sys.executable, "-c", code, *folders], capture_output=True, text=True, env=env, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    out = json.loads(res.stdout.strip().splitlines()[-1])
    for folder in folders:
        ranked = out[folder][0]
        assert len(ranked) == 3 and abs(sum(r["score"] for r in ranked) - 1) < 1e-5
        api = RoutedNLIPredictor.from_pretrained(folder).predict(
            {"premise": "Ann managed to leave.", "hypothesis": "Ann left.", "meta": "+|-"})[0]
        assert ranked[0]["label"] == api["label"] and ranked[0]["route"] == api["route"]
        assert ranked[0]["score"] == pytest.approx(api["score"], abs=1e-6)


def test_the_pipeline_takes_a_loaded_model_and_tokenizer(runs):
    import nli_routing.inference.pipeline  # noqa: F401
    from transformers import AutoModel, AutoTokenizer, pipeline

    root, *_ = runs
    folder = root / "lstm-h2h"
    nli = pipeline("routed-nli", model=AutoModel.from_pretrained(folder), tokenizer=AutoTokenizer.from_pretrained(folder))
    out = nli({"text": "Ann managed to leave.", "text_pair": "Ann left.", "meta": "+|-"})
    assert out[0]["route"].keys() == {"lstm-h2h"} and 0 < out[0]["score"] <= 1


@pytest.mark.parametrize("method", ["wp-signature", "wp-kmeans", "wp-basic", "lstm-h2h"])
def test_the_pipeline_batches_pairs_of_any_meta_and_gives_what_one_at_a_time_gives(runs, method):
    """Issue 30: ``batch_size=8`` runs pairs of different signatures (or dispatched classes) in one
    forward; labels, routes and scores are those of one pair per forward and of the predictor."""
    import nli_routing.inference.pipeline  # noqa: F401
    from transformers import pipeline

    root, prepared, _ = runs
    pairs = [{"text": p["premise"], "text_pair": p["hypothesis"], "meta": p["signature"]}
             for p in pairs_of(prepared.data["test"].select(range(21)))]
    assert len({p["meta"] for p in pairs}) > 2
    nli = pipeline("routed-nli", model=str(root / method))
    calls = []
    forward = nli._forward
    nli._forward = lambda inputs, **kw: calls.append(len(inputs["premises"])) or forward(inputs, **kw)
    one, batched = nli(pairs, batch_size=1), nli(pairs, batch_size=8)
    assert calls[21:] == [8, 8, 5]  # three forwards of the batched call
    api = RoutedNLIPredictor.from_pretrained(root / method).predict(
        [{"premise": p["text"], "hypothesis": p["text_pair"], "meta": p["meta"]} for p in pairs])
    for a, b, c in zip(one, batched, api):
        assert (a[0]["label"], a[0]["route"], a[0]["meta"]) == (b[0]["label"], b[0]["route"], b[0]["meta"])
        assert (b[0]["label"], b[0]["route"], b[0]["meta_source"]) == (c["label"], c["route"], c["meta_source"])
        assert a[0]["score"] == pytest.approx(b[0]["score"], abs=1e-5)


@pytest.fixture(scope="module")
def every_route(tmp_path_factory):
    """A tiny BERT (the packaged MiniLM's tokenizer, hidden size 32, 2 layers) fine-tuned briefly
    with every route of the fine-tuning recipe; each run folder is a saved Hugging Face model."""
    from transformers import AutoTokenizer, BertConfig, BertModel

    from nli_routing.models.embeddings import default_model_path

    import torch

    root = tmp_path_factory.mktemp("routes")
    tok = AutoTokenizer.from_pretrained(default_model_path())
    torch.manual_seed(0)
    BertModel(BertConfig(vocab_size=tok.vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                         intermediate_size=37)).save_pretrained(root / "tiny-bert")
    tok.save_pretrained(root / "tiny-bert")
    dsd, names = load_data(PairDataArgs(max_train_samples=48, max_eval_samples=24, max_length=32, allow_unseen_meta=True))
    train_cfg = TrainConfig(epochs=1, batch_size=16, lr=1e-3, block_optimizer="adam", router_lr_ratio=5.0, seed=0)
    summaries = {}
    for route in ("none", "classifier", "attention", "block", "lora"):
        tcfg = TransformerNLIConfig(route=route, num_blocks=2, lora_rank=2, classifier_hidden=16,
                                    model_name_or_path=str(root / "tiny-bert"))
        summaries[route] = train_transformer(dsd, names, "signature", tcfg, train_cfg, 32, root / route)["summary"]
    return root, dsd, summaries


@pytest.mark.parametrize("route", ["none", "classifier", "attention", "block", "lora"])
def test_every_transformer_route_reports_every_routed_layer(every_route, route):
    """Issue 29: the run summary lists each routed layer's entropy, distinct paths and top-block share per depth."""
    root, _, summaries = every_route
    layers = summaries[route]["routing_layers"]
    from transformers import AutoModel

    names = AutoModel.from_pretrained(root / route).routed_layer_names
    assert [entry["layer"] for entry in layers] == list(names)
    for entry in layers:
        assert 0.0 <= entry["entropy"] <= 2.0 + 1e-6  # at most 4 blocks (the routed classifier): 2 bits
        assert entry["distinct_paths"] >= 1 and 0.0 < entry["top_path_share"] <= 1.0
        assert all(0.0 < share <= 1.0 for share in entry["top_block_share_per_depth"])
    assert isinstance(summaries[route]["collapse_warnings"], list)


@pytest.mark.parametrize("route", ["none", "classifier", "attention", "block", "lora"])
def test_every_transformer_route_predicts_its_runs_records(every_route, route):
    """Saved with save_pretrained, loaded by the predictor: the run's own test labels and routes."""
    from transformers import AutoModel, pipeline

    import nli_routing.inference.pipeline  # noqa: F401

    root, dsd, _ = every_route
    folder = root / route
    loaded = AutoModel.from_pretrained(folder)
    assert loaded.config.route == route
    predictor = RoutedNLIPredictor.from_pretrained(folder)
    preds = predictor.predict(pairs_of(dsd["test"]), batch_size=10)
    record = load_routing_record(folder / "routing_test.npz")
    labels = [predictor.model.config.label2id[p["label"]] for p in preds]
    assert np.array_equal(np.asarray(labels), record.preds), f"{route}: labels differ from the run's test record"
    assert bool(record.layers) == (route != "none"), f"{route}: routed layers in the record {record.layers}"
    for layer in record.layers:
        for i, p in enumerate(preds):
            want = [("stop" if a == layer.stop_action else int(a)) for a in layer.actions[i] if a >= 0]
            assert p["route"][layer.name] == want, f"{route}, sample {i}, layer {layer.name}"
    nli = pipeline("routed-nli", model=str(folder))
    first = pairs_of(dsd["test"])[0]
    ranked = nli([{"text": first["premise"], "text_pair": first["hypothesis"], "meta": first["signature"]}], top_k=None)[0]
    assert ranked[0]["label"] == preds[0]["label"] and ranked[0]["route"] == preds[0]["route"]
