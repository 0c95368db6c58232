"""benchmarks/sci_hyper.py, thesis Figures 7.6 / 7.7 (issue 32): the swept setting lands in the right
configuration on top of the preset, bad flags fail in one line, and a run records its curves."""

import importlib
import json

import pytest

from nli_routing.data import EMBEDDED_SCI
from nli_routing.experiments.presets import preset_values
from nli_routing.models.nli import NLIModelConfig
from nli_routing.routing.exploration import get_schedule
from nli_routing.training.loop import TrainConfig

hyper = importlib.import_module("benchmarks.sci_hyper")
THESIS = preset_values("thesis", "nli", {f for cls in hyper.CONFIGS for f in cls.__dataclass_fields__})


def test_figure_76_sweeps_the_thesis_schedules_into_the_model_over_the_preset():
    setting, values = hyper.FIGURES["7.6"]
    assert setting == "exploration" and values == ["thesis-high", "thesis-med", "thesis-low"]
    base, model, train, dispatch = hyper.configs(setting, "thesis-med", THESIS, 3, 5, 2, "wp-basic")
    assert base == "wp-basic" and model.exploration == "thesis-med"
    # the preset is underneath: b = 15, d = 3, SGD at 0.05, the thesis' dispatcher input
    assert (model.wp_width, model.wp_depth, train.block_optimizer, train.lr) == (15, 3, "sgd", 0.05)
    assert dispatch.dispatch_input == "premise" and train.seed == 3 and dispatch.stage2_epochs == 2
    # Figure 7.6's medium schedule: 0.25, divided by 4 after 5 epochs
    sched = get_schedule(model.exploration)
    assert sched.epsilon(0) == pytest.approx(0.25) and sched.epsilon(5) == pytest.approx(0.0625)


def test_figure_77_sets_the_router_rate_below_the_block_rate_in_the_training_config():
    setting, values = hyper.FIGURES["7.7"]
    assert setting == "router_lr_ratio" and float(values[0]) < 1 < float(values[-1])
    value = hyper.parse_value(TrainConfig, setting, "0.1")
    _, model, train, _ = hyper.configs(setting, value, {}, 0, 5, 2, "wp-signature")
    assert train.router_lr_ratio == 0.1 and model == NLIModelConfig()  # no preset: the library's model


def test_values_are_parsed_by_the_type_of_the_field():
    assert hyper.parse_value(NLIModelConfig, "wp_width", "7") == 7
    assert hyper.parse_value(NLIModelConfig, "wp_residual", "false") is False
    with pytest.raises(ValueError, match="not a value of wp_width"):
        hyper.parse_value(NLIModelConfig, "wp_width", "seven")


@pytest.mark.parametrize("argv, message", [
    (["--figure", "7.6", "--values", "thesis-hgh"], "--values thesis-hgh"),
    (["--figure", "7.6", "--values", "fast", "slow"], "--values fast"),
    (["--figure", "7.7", "--values", "-1"], "router_lr_ratio"),
    (["--figure", "7.7", "--values", "one"], "--values 'one': not a value of router_lr_ratio"),
    (["--setting", "no_such_field", "--values", "1"], "--setting 'no_such_field' is not a field"),
    (["--setting", "lr"], "give --figure 7.6|7.7, or --setting NAME with --values"),
    (["--figure", "7.7", "--setting", "lr"], "--figure 7.7 sweeps router_lr_ratio"),
    (["--figure", "7.7", "--values", "1", "1"], "a value is repeated"),
    (["--figure", "7.6", "--methods", "wp-nope"], "--methods wp-nope"),
    (["--figure", "7.6", "--preset", "thesys"], "--preset must be one of"),
    (["--figure", "7.6", "--worker", "2", "--workers", "2"], "--worker 2: must be in 0..1"),
])
def test_bad_flags_fail_in_one_line_before_any_run(argv, message, capsys, tmp_path):
    with pytest.raises(SystemExit):
        hyper.main([*argv, "--sci_root", str(tmp_path / "nothing"), "--out", str(tmp_path / "o.json")])
    err = capsys.readouterr().err.strip().splitlines()
    assert message in err[-1]
    assert not (tmp_path / "o.json").exists()


def test_report_only_refuses_files_of_other_sweeps_or_no_results(tmp_path, capsys):
    a, b, c = tmp_path / "a.json", tmp_path / "b.json", tmp_path / "c.json"
    a.write_text(json.dumps({"setting": "exploration", "args": {"values": ["x"]}, "runs": []}))
    b.write_text(json.dumps({"setting": "router_lr_ratio", "args": {"values": ["1"]}, "runs": []}))
    c.write_text("not json")
    with pytest.raises(SystemExit):
        hyper.main(["--report_only", "--inputs", str(a), str(b), "--out", str(tmp_path / "m.json")])
    assert "sweep different settings" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        hyper.main(["--report_only", "--inputs", str(c), "--out", str(tmp_path / "m.json")])
    assert f"--inputs {c}: not a sci_hyper result file" in capsys.readouterr().err


def run(value, seed, acc, hist):
    return {"value": value, "method": "wp-signature", "seed": seed, "test_accuracy": acc,
            "validation_history": hist, "validation_history_stage1": None, "routing_entropy": 1.0,
            "dispatch_entropy": None}


def test_verdict_compares_the_best_value_with_each_other_by_welch():
    runs = [run("a", s, acc, [0.5, acc]) for s, acc in enumerate([0.90, 0.91, 0.92])]
    runs += [run("b", s, acc, [0.5, acc]) for s, acc in enumerate([0.50, 0.52, 0.51])]
    runs += [run("c", s, 0.46, [0.46, 0.46]) for s in range(3)]
    runs += [run("d", s, 0.46, [0.46, 0.46]) for s in range(3)]
    summary = hyper.summarize(runs, ["a", "b", "c", "d"])
    assert summary["wp-signature"]["a"]["escape"] == [2, 2, 2]
    assert summary["wp-signature"]["c"]["escape"] == [None, None, None]
    (line,) = hyper.verdicts(summary, "exploration")
    assert line.startswith("wp-signature: best exploration = a (91.0)")
    assert "b -40.0 (Welch p = 0.000)" in line and line.endswith("the setting matters (p < 0.05)")
    # identical on every seed: no spread to test, and not "significant"
    flat = hyper.summarize([r for r in runs if r["value"] in ("c", "d")], ["c", "d"])
    (line,) = hyper.verdicts(flat, "exploration")
    assert "the same accuracy on every seed" in line and "no significant difference" in line


def test_a_tiny_sweep_runs_records_curves_and_resumes(tmp_path):
    out = tmp_path / "s.json"
    argv = ["--setting", "router_lr_ratio", "--values", "0.5", "2", "--methods", "wp-signature", "--preset", "none",
            "--sci_root", str(EMBEDDED_SCI), "--seeds", "0", "--epochs", "2", "--max_train_samples", "96",
            "--out", str(out)]
    hyper.main(argv)
    data = json.loads(out.read_text())
    assert data["setting"] == "router_lr_ratio" and data["values"] == ["0.5", "2"]
    assert [(r["value"], r["seed"]) for r in data["runs"]] == [("0.5", 0), ("2", 0)]
    assert all(len(r["validation_history"]) == 2 for r in data["runs"])
    assert out.with_suffix(".png").stat().st_size > 0
    before = out.read_text()
    hyper.main([*argv, "--resume"])  # everything done: nothing re-run, the same runs
    assert json.loads(out.read_text())["runs"] == json.loads(before)["runs"]
