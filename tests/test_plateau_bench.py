"""The plateau measurements of issue 15: escape epochs, settings pinned to the thesis, variant rows."""

import importlib

import pytest



def load(name: str):
    return importlib.import_module(f"benchmarks.{name}")


def run(method, seed, history, stage1=None, warnings=None):
    return {"method": method, "column": "joint", "seed": seed, "validation_history": history,
            "validation_history_stage1": stage1, "best_epoch": len(history) - 1, "collapse_warnings": warnings}


def test_escape_epoch_is_the_first_epoch_at_the_threshold_and_stage_one_counts_for_two_stage():
    bench = load("sci_dispatch")
    assert bench.escape_epoch([0.5, 0.74, 0.75, 0.9]) == 3
    assert bench.escape_epoch([0.5, 0.6]) is None
    runs = [run("wp-signature", 0, [0.8, 0.9], warnings=[None, ["collapsed"]]),
            run("wp-signature", 1, [0.6, 0.6, 0.6, 0.8]),
            run("wp-signature+D", 0, [0.5, 0.5], stage1=[0.6, 0.76])]
    lines = "\n".join(bench.escape_table(runs))
    assert "WP signature               1/2 by epoch 3, escape epochs [1, 4]" in lines
    assert "collapse warning in the last epoch: 1/2" in lines
    assert "WP+D (two-stage)           1/1 by epoch 3, escape epochs [2]" in lines


def test_variant_rows_name_a_method_and_its_overrides():
    bench = load("sci_dispatch")
    for key, (method, overrides) in bench.VARIANTS.items():
        assert key.startswith(method + "/") and overrides
        assert any(m == key for _, m in bench.ROWS)
        assert key not in bench.DISPATCHING


def test_plateau_settings_are_pinned_to_the_thesis_configuration_they_measured():
    bench = load("sci_plateau")
    method, model, train = bench.SETTINGS["default"]
    assert method == "wp-signature" and train == {}
    assert model == {"pair_features": "concat", "classifier_layers": 3, "router_init": -1.0,
                     "learner_args": "ties=random,batch_mean=state-action"}
    assert bench.SETTINGS["cls-sig-he"][1]["router_init"] == -1.0  # measured before the tables started at 0
    assert bench.SETTINGS["ties-lowest"][1]["learner_args"] == "ties=lowest,batch_mean=state-action"
    assert bench.SETTINGS["match-cls1"][1]["pair_features"] == "match"
    assert bench.resolve_setting("m:wp-signature+D") == ("wp-signature+D", {}, {})
    with pytest.raises(SystemExit, match="unknown method"):
        bench.resolve_setting("m:nope")


def test_report_inputs_merge_with_renames_method_filters_and_sources(tmp_path):
    """sci_dispatch --report_only: FILE:methods, --rename (ran_as kept), --keep, the first file wins."""
    import json

    bench = load("sci_dispatch")
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    a.write_text(json.dumps({"commit": "A", "runs": [
        {"method": "wp-basic/mi-adam", "column": "joint", "seed": 0, "test_accuracy": 0.9},
        {"method": "cbow", "column": "joint", "seed": 0, "test_accuracy": 0.8}]}))
    b.write_text(json.dumps({"commit": "B", "runs": [
        {"method": "wp-basic", "column": "joint", "seed": 0, "test_accuracy": 0.1},  # a holds this key already
        {"method": "wp-basic", "column": "joint", "seed": 1, "test_accuracy": 0.7},
        {"method": "cbow", "column": "joint", "seed": 1, "test_accuracy": 0.6},
        {"method": "wp-kmeans", "column": "joint", "seed": 0, "test_accuracy": 0.5}]}))
    runs, metas = bench.merge_inputs([str(a), f"{b}:wp-basic,wp-kmeans"], {"wp-basic/mi-adam": "wp-basic"},
                                     keep=["wp-basic", "cbow"])
    got = {(r["method"], r["seed"]): (r["test_accuracy"], r["source"], r.get("ran_as")) for r in runs}
    assert got == {("wp-basic", 0): (0.9, str(a), "wp-basic/mi-adam"), ("cbow", 0): (0.8, str(a), None),
                   ("wp-basic", 1): (0.7, str(b), None)}
    assert [m["commit"] for m in metas] == ["A", "B"]
    with pytest.raises(ValueError, match="no such file"):
        bench.merge_inputs([str(tmp_path / "c.json:cbow")], {}, None)
    with pytest.raises(ValueError, match="has no runs of \\['wp-rbae-seq'\\]"):
        bench.merge_inputs([f"{b}:wp-rbae-seq"], {}, None)
    with pytest.raises(ValueError, match="--rename/--keep lstmm: not a row"):
        bench.merge_inputs([str(a)], {}, keep=["lstmm"])
    with pytest.raises(ValueError, match="--rename/--keep wp-basik: not a row"):
        bench.merge_inputs([str(a)], {"wp-basic/mi-adam": "wp-basik"}, None)
    (tmp_path / "bad.json").write_text("{bad")
    with pytest.raises(ValueError, match="bad.json: not a result file"):
        bench.merge_inputs([str(tmp_path / "bad.json")], {}, None)


def test_rnn_claims_compare_each_routed_rnn_with_the_unrouted_one():
    bench = load("sci_dispatch")
    runs = [{"method": m, "column": "nested", "seed": s, "test_accuracy": a}
            for m, accs in (("lstm", [0.50, 0.52, 0.48]), ("lstm-h2h", [0.59, 0.61, 0.60])) for s, a in enumerate(accs)]
    summary = bench.summarize(runs)
    lines = bench.rnn_claims(summary, lambda m, c: [r["test_accuracy"] for r in runs if (r["method"], r["column"]) == (m, c)])
    assert len(lines) == 1 and lines[0].startswith("nested: lstm-h2h 60.0 vs unrouted RNN 50.0 (+10.0 points, +20.0% relative")


def test_run_configs_layers_recipe_defaults_preset_and_the_rows_own_settings():
    """sci_dispatch.run_configs (shared with sci_hyper): the preset over the recipe defaults, a row's alias
    over the preset; '/thesis' rows keep the thesis' dispatcher training whatever the defaults become."""
    from nli_routing.experiments.nli import RECIPE_TRAIN_DEFAULTS

    bench = load("sci_dispatch")
    base, model, train, dispatch = bench.run_configs("wp-basic", {}, 3, 5, 2)
    assert base == "wp-basic" and train.seed == 3 and train.epochs == 5 and dispatch.stage2_epochs == 2
    assert all(getattr(train, k) == v for k, v in RECIPE_TRAIN_DEFAULTS.items())
    assert dispatch.resolved("basic")["state_norm"] is True  # issue 29: the online default
    preset = {"lr": 0.05, "router_balance_share": 1.0, "dispatch_balance": 0.0, "not_a_field": 1}
    _, model, train, dispatch = bench.run_configs("wp-basic/norm", preset, 0, 5, 3)
    assert train.lr == 0.05 and model.router_balance_share == 1.0 and dispatch.dispatch_balance == 0.0
    assert dispatch.dispatch_state_norm is True  # the alias over the preset
    _, _, _, thesis = bench.run_configs("wp-rbae-cbow/thesis", {}, 0, 5, 3)
    assert thesis.resolved("rbae-cbow") == {"input": "premise", "target": "reward", "balance": 0.0, "balance_term": "mi",
                                            "state_norm": False, "agent_to_encoder": False}
    base, model, _, _ = bench.run_configs("wp-signature/init0", {}, 0, 5, 3)
    assert base == "wp-signature" and model.router_init == 0.0 and model.router_balance_share == 1.0


def test_k13_rows_are_online_dispatchers_with_one_class_per_signature_of_joint():
    bench = load("sci_dispatch")
    assert bench.method_of("wp-basic/k13") == ("wp-basic", {})
    assert bench.dispatch_k_of("wp-basic/k13") == 13 and bench.dispatch_k_of("wp-basic") == 5
    assert any(m == "wp-rbae-onehot/k13" for _, m in bench.ROWS)


def test_dispatch_nmi_null_separates_an_informative_dispatch_from_a_shuffled_one():
    """The NMI's shuffled-class null: a dispatch that follows the signature is far above it, a dispatch
    independent of it is not; the dispatch table reports both."""
    bench = load("sci_dispatch")
    aligned = {"distribution": {"+|-": [300, 0, 0], "-|+": [0, 300, 0], "o|o": [0, 0, 300]}}
    independent = {"distribution": {"+|-": [100, 100, 100], "-|+": [100, 100, 100], "o|o": [100, 100, 100]}}
    null = bench.dispatch_nmi_null(aligned)
    assert bench.dispatch_nmi(aligned) == 1.0 and 0.0 < null < 0.02
    assert bench.dispatch_nmi(independent) == 0.0 <= bench.dispatch_nmi_null(independent)
    assert bench.dispatch_nmi_null(None) is None
    runs = [{"method": "wp-basic", "column": "joint", "seed": s, "dispatch_entropy": 1.5, "dispatch": d,
             "dispatch_nmi": bench.dispatch_nmi(d), "collapse_warnings": [None]}
            for s, d in enumerate([aligned, independent])]
    line = bench.dispatch_table(runs)[1]
    assert "above 1/2" in line and "collapse 0/2" in line
