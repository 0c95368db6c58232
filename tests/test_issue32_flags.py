"""Issue 32's Done-when "Every new flag: two bad values each give a one-line error": the flags and
config fields issue 32 added whose bad values the other tests (test_bad_input.py's recipe table,
test_thesis_options.py, test_training_options.py, test_image_mtl.py, test_sci_overlap_bench.py,
test_sci_hyper_bench.py) check fewer than twice, each through the entry point a researcher uses:
the recipes' flag parsing, the benchmarks' ``main``, or the config the recipe builds. No training runs.
"""

from __future__ import annotations

import importlib
import math
import re
import runpy
import sys
from pathlib import Path

import numpy as np
import pytest

from nli_routing.data import EMBEDDED_SCI

TRUTHY = r"Truthy value expected: got {} but expected one of yes/no, true/false, t/f, y/n, 1/0"


def _tiny_mnist(tmp: Path) -> str:
    """An ``.npz`` with 10 classes of 8x8 images: enough for --per_class 2 --test_per_task 2."""
    rng = np.random.default_rng(0)
    arrays = {"x_train": rng.integers(0, 256, (100, 8, 8), dtype=np.uint8), "y_train": np.repeat(np.arange(10), 10),
              "x_test": rng.integers(0, 256, (50, 8, 8), dtype=np.uint8), "y_test": np.repeat(np.arange(10), 5)}
    path = tmp / "tiny_mnist.npz"
    np.savez(path, **arrays)
    return str(path)


def _data(tmp: Path) -> list[str]:
    return ["--data_path", _tiny_mnist(tmp), "--per_class", "2", "--test_per_task", "2"]


# --------------------------------------------------------------------------- the recipes' flags
#: (recipe, flags (a list, or a builder tmp -> list), message of the one error line)
RECIPE_CASES = [
    # --preset (SCI, MultiNLI and image recipes): sci 'bogus' and image 'nope' are in test_bad_input.py
    ("multinli.py", ["--preset", "bogus"], r"--preset must be one of \['thesis'\], got 'bogus'"),
    ("multinli.py", ["--preset="], r"--preset must be one of \['thesis'\], got ''"),
    ("image_mtl.py", ["--preset", "Thesis"], r"--preset must be one of \['thesis'\], got 'Thesis'"),
    ("image_mtl.py", ["--preset"], r"--preset needs a name"),
    # --meta_keyword_mode: 'words' and tokens-with-route-wp are in test_bad_input.py; two plain bad values here
    ("sci_wp_dispatch.py", ["--meta_keyword_mode", ""], r"meta_keyword_mode must be one of \('vector', 'tokens'\), got ''"),
    ("multinli.py", ["--meta_keyword_mode", "Tokens"], r"meta_keyword_mode must be one of \('vector', 'tokens'\), got 'Tokens'"),
    # --exploration on the image recipe (the SCI/finetune recipes have four bad values in test_bad_input.py)
    ("image_mtl.py", ["--exploration", "thesis-hi"], r"exploration must be one of \[.*'thesis-high'.*\] or START/ANNEAL/EVERY/FLOOR, got 'thesis-hi'"),
    ("image_mtl.py", ["--exploration", "0.1/0.25/5/0.5"], r"exploration schedule '0.1/0.25/5/0.5': .*floor"),
    # --sigma_mode: 'share' and knockout with sigma 1 are in test_bad_input.py
    ("image_mtl.py", ["--sigma_mode", ""], r"sigma_mode must be one of \('keep', 'knockout'\), got ''"),
    ("image_mtl.py", ["--sigma_mode", "knockout", "--sigma", "-0.1"],
     r"sigma must be in \[0, 1\) \(the share of units a task's mask switches off\), got -0.1"),
    # --lr_step_epochs / --lr_step_factor (TrainConfig tests in test_training_options.py; here on the command line)
    ("sci_wp_dispatch.py", ["--lr_step_epochs", "-1"], r"lr_step_epochs must be an integer >= 0 \(0: constant rates\), got -1"),
    ("image_mtl.py", ["--lr_step_epochs", "2.5"], r"argument --lr_step_epochs(/--lr-step-epochs)?: invalid int value: '2.5'"),
    ("image_mtl.py", ["--lr_step_factor", "1"], r"lr_step_factor must be a number > 1 \(the learning rates are divided by it\), got 1.0"),
    ("multinli.py", ["--lr_step_factor", "nan"], r"lr_step_factor must be a number > 1 .*got nan"),
    # --routed_convs / --conv_width (Re-examining Routing Networks)
    ("image_mtl.py", ["--routed_convs", "0"], r"routed_convs: '0' is not a conv layer number in 1\.\.4"),
    ("image_mtl.py", ["--routed_convs", "1,1"], r"routed_convs lists a layer twice: '1,1'"),
    ("image_mtl.py", ["--routed_convs", "1,x"], r"routed_convs: 'x' is not a conv layer number in 1\.\.4"),
    ("image_mtl.py", ["--conv_width", "-1"], r"conv_width must be >= 0 \(0: one block per task\), got -1"),
    ("image_mtl.py", ["--conv_width", "x"], r"argument --conv_width(/--conv-width)?: invalid int value: 'x'"),
    ("image_mtl.py", lambda t: [*_data(t), "--method", "no-sharing", "--conv_width", "2"],
     r"--method no-sharing: conv_width: method 'no-sharing' has one block per task in every layer"),
    # --allow_pass (the PASS action)
    ("image_mtl.py", ["--allow_pass", "maybe"], r"argument --allow_pass(/--allow-pass)?: " + TRUTHY.format("maybe")),
    ("image_mtl.py", lambda t: [*_data(t), "--method", "shared-bottom", "--allow_pass"],
     r"--method shared-bottom: allow_pass adds an action to routed FC layers; method 'shared-bottom' routes none"),
    ("image_mtl.py", lambda t: [*_data(t), "--method", "soft-mixture", "--allow_pass"],
     r"--method soft-mixture: allow_pass: the soft mixture has no router to choose PASS"),
    ("image_mtl.py", lambda t: [*_data(t), "--method", "routing", "--allow_pass"],
     r"--method routing: the PASS action keeps a sample's activation: every step must keep its size"),
    # --one_task_batches
    ("image_mtl.py", ["--one_task_batches", "maybe"], r"argument --one_task_batches(/--one-task-batches)?: " + TRUTHY.format("maybe")),
    ("image_mtl.py", ["--one_task_batches", "2"], r"argument --one_task_batches(/--one-task-batches)?: " + TRUTHY.format("2")),
    # --dataset (the Fashion-MNIST-MTL loader is issue 7's; 'bogus' is in test_bad_input.py)
    ("image_mtl.py", ["--dataset", "fashion-mnist"], r"--dataset must be one of \[.*'fashion-mnist-mtl'.*\], got 'fashion-mnist'"),
]


@pytest.mark.parametrize(("recipe", "flags", "pattern"), RECIPE_CASES,
                         ids=[f"{r.removesuffix('.py')}-{i}" for i, (r, _, _) in enumerate(RECIPE_CASES)])
def test_recipe_flag_refuses_a_bad_value_in_one_line(recipe, flags, pattern, tmp_path, monkeypatch, capsys) -> None:
    argv = flags(tmp_path) if callable(flags) else list(flags)
    monkeypatch.setattr("sys.argv", [recipe, "--output_dir", "/nonexistent/never-written", *argv])
    monkeypatch.delitem(sys.modules, f"recipes.{recipe.removesuffix('.py')}", raising=False)  # (runpy warns otherwise)
    with pytest.raises(SystemExit) as exc:
        runpy.run_module(f"recipes.{recipe.removesuffix('.py')}", run_name="__main__")
    err = capsys.readouterr().err
    assert exc.value.code == 2 and "Traceback" not in err and "usage:" not in err, err
    lines = err.strip().splitlines()
    if callable(flags):  # the data was read first: INFO lines may come before the error
        lines = [line for line in lines if not line.startswith("INFO ")]
    assert len(lines) == 1, f"more than the error line:\n{err}"
    assert lines[0].startswith(f"{recipe}: error: ") and re.search(pattern, lines[0]), err


# --------------------------------------------------------------------------- DBSCAN's settings (OfflineDispatcher)
@pytest.mark.parametrize(("kwargs", "pattern"), [
    ({"eps": -1.0}, r"eps must be > 0 \(or None: chosen from the data\), got -1.0"),
    ({"eps": math.nan}, r"eps must be > 0 \(or None: chosen from the data\), got nan"),
    ({"min_samples": 0}, r"min_samples must be >= 1, got 0"),
    ({"min_samples": -3}, r"min_samples must be >= 1, got -3"),
])
def test_dbscan_settings_refuse_bad_values_in_one_line(kwargs, pattern) -> None:
    from nli_routing.dispatch.offline import OfflineDispatcher

    with pytest.raises(ValueError, match=pattern) as info:
        OfflineDispatcher("dbscan", **kwargs)
    assert "\n" not in str(info.value)


# --------------------------------------------------------------------------- the PASS action's config (both methods' checks)
@pytest.mark.parametrize(("method", "pattern"), [
    ("task-specific-all-fc", r"allow_pass adds an action to routed FC layers; method 'task-specific-all-fc' routes none"),
    ("cross-stitch", r"allow_pass adds an action to routed FC layers; method 'cross-stitch' routes none"),
])
def test_allow_pass_on_a_method_without_a_router_is_one_line(method, pattern) -> None:
    from nli_routing.models.vision import VisionMTLConfig

    with pytest.raises(ValueError, match=pattern) as info:
        VisionMTLConfig(method=method, allow_pass=True)
    assert "\n" not in str(info.value)


# --------------------------------------------------------------------------- benchmarks/sci_dispatch.py --preset, --methods
@pytest.mark.parametrize(("argv", "pattern"), [
    (["--preset", "bogus"], r"^--preset must be one of \['thesis'\], got 'bogus'$"),
    (["--preset", ""], r"^--preset must be one of \['thesis'\], got ''$"),
    (["--methods", "lstm-h2x"], r"^--methods lstm-h2x: unknown method 'lstm-h2x'"),
    (["--methods", "lstm", "bogus"], r"^--methods bogus: unknown method 'bogus'"),
])
def test_sci_dispatch_refuses_bad_values_in_one_line_before_any_run(argv, pattern, tmp_path, monkeypatch) -> None:
    bench = importlib.import_module("benchmarks.sci_dispatch")
    out = tmp_path / "o.json"
    monkeypatch.setattr("sys.argv", ["sci_dispatch.py", *argv, "--sci_root", str(tmp_path / "nothing"), "--out", str(out)])
    with pytest.raises(SystemExit) as exc:
        bench.main()
    message = exc.value.code
    assert isinstance(message, str) and "\n" not in message and re.search(pattern, message), message
    assert not out.exists()


# --------------------------------------------------------------------------- benchmarks/image_mtl.py --methods aliases
@pytest.mark.parametrize("name", ["routing-conv4", "routing-conv1/balanc"])
def test_image_mtl_benchmark_refuses_an_unknown_alias_in_one_line(name, tmp_path, monkeypatch, capsys) -> None:
    bench = importlib.import_module("benchmarks.image_mtl")
    monkeypatch.setattr("sys.argv", ["image_mtl.py", "--methods", "routing-conv1", name, "--out", str(tmp_path / "o.json")])
    with pytest.raises(SystemExit) as exc:
        bench.main()
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert exc.value.code == 2 and last.startswith(f"image_mtl.py: error: --methods {name}: unknown; choose from"), last
    assert "'routing-conv123/balance'" in last and not (tmp_path / "o.json").exists()


# --------------------------------------------------------------------------- benchmarks/sci_overlap.py --shuffle_signatures
@pytest.mark.parametrize(("argv", "message"), [
    (["--shuffle_signatures", "yes"], "unrecognized arguments: yes"),
    (["--shuffle_signatures=1"], "argument --shuffle_signatures: ignored explicit argument '1'"),
])
def test_sci_overlap_shuffle_signatures_takes_no_value(argv, message, capsys) -> None:
    overlap = importlib.import_module("benchmarks.sci_overlap")
    with pytest.raises(SystemExit) as exc:
        overlap.main(["--data_dir", str(EMBEDDED_SCI / "joint"), *argv])
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert exc.value.code == 2 and last.endswith(message), last


# --------------------------------------------------------------------------- benchmarks/sci_hyper.py: every flag
#: (argv, message of the last stderr line); test_sci_hyper_bench.py has --values (4), --inputs (2), --setting,
#: --methods, --preset and --worker once each
HYPER_CASES = [
    (["--figure", "7.8"], "argument --figure: invalid choice: '7.8' (choose from '7.6', '7.7')"),
    (["--figure", ""], "argument --figure: invalid choice: '' (choose from '7.6', '7.7')"),
    (["--setting", "", "--values", "1"], "give --figure 7.6|7.7, or --setting NAME with --values V ..."),
    (["--setting", "wp_widht", "--values", "7"], "--setting 'wp_widht' is not a field"),
    (["--figure", "7.6", "--methods", "wp-signature", "bogus"], "--methods bogus: unknown method 'bogus'"),
    (["--figure", "7.6", "--preset", ""], "--preset must be one of ['thesis'], got ''"),
    (["--figure", "7.6", "--preset", "Thesis"], "--preset must be one of ['thesis'], got 'Thesis'"),
    (["--figure", "7.6", "--variant", "nested"], "argument --variant: invalid choice: 'nested'"),
    (["--figure", "7.6", "--variant", ""], "argument --variant: invalid choice: ''"),
    (["--figure", "7.6", "--seeds", "x"], "argument --seeds: invalid int value: 'x'"),
    (["--figure", "7.6", "--seeds", "0", "-1"], "--seeds 0 -1: a seed must be >= 0"),
    (["--figure", "7.6", "--epochs", "0"], "epochs must be >= 1, got 0"),
    (["--figure", "7.6", "--epochs", "x"], "argument --epochs: invalid int value: 'x'"),
    (["--figure", "7.6", "--stage2_epochs", "0"], "stage2_epochs must be >= 1, got 0"),
    (["--figure", "7.6", "--stage2_epochs", "-2"], "stage2_epochs must be >= 1, got -2"),
    (["--figure", "7.6", "--max_train_samples", "-1"], "--max_train_samples -1: must be >= 0 (0: all of it)"),
    (["--figure", "7.6", "--max_train_samples", "x"], "argument --max_train_samples: invalid int value: 'x'"),
    (["--figure", "7.6", "--worker", "-1"], "--worker -1: must be in 0..0 (--workers 1)"),
    (["--figure", "7.6", "--workers", "0"], "--worker 0: must be in 0..-1 (--workers 0)"),
    (["--figure", "7.6", "--workers", "x"], "argument --workers: invalid int value: 'x'"),
    (["--figure", "7.6", "--resume=yes"], "argument --resume: ignored explicit argument 'yes'"),
    (["--figure", "7.6", "--report_only=1"], "argument --report_only: ignored explicit argument '1'"),
    (["--figure", "7.6", "--sci_root", "/nonexistent/sci"], "--sci_root /nonexistent/sci: no folder joint in it"),
    (["--figure", "7.6", "--sci_root", __file__], f"--sci_root {__file__}: no folder joint in it"),
    (["--figure", "7.6", "--sci_root", str(EMBEDDED_SCI), "--variant", "mismatch", "--max_train_samples", "3"],
     "mismatch: --max_train_samples 3 cannot hold the 9 signature classes of the training data"),
]


@pytest.mark.parametrize(("argv", "message"), HYPER_CASES, ids=[" ".join(a) for a, _ in HYPER_CASES])
def test_sci_hyper_refuses_each_bad_value_in_one_line_before_any_run(argv, message, capsys, tmp_path) -> None:
    hyper = importlib.import_module("benchmarks.sci_hyper")
    if "--sci_root" not in argv:
        argv = [*argv, "--sci_root", str(tmp_path / "nothing")]
    with pytest.raises(SystemExit) as exc:
        hyper.main([*argv, "--out", str(tmp_path / "o.json")])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and "Traceback" not in err, err
    assert message in err.strip().splitlines()[-1], err
    assert not (tmp_path / "o.json").exists()


@pytest.mark.parametrize("where", ["folder", "under-a-file"])
def test_sci_hyper_refuses_an_out_that_cannot_be_written(where, capsys, tmp_path) -> None:
    hyper = importlib.import_module("benchmarks.sci_hyper")
    (tmp_path / "afile").write_text("x")
    out = tmp_path if where == "folder" else tmp_path / "afile" / "o.json"
    with pytest.raises(SystemExit) as exc:
        hyper.main(["--figure", "7.6", "--sci_root", str(EMBEDDED_SCI), "--out", str(out)])
    last = capsys.readouterr().err.strip().splitlines()[-1]
    want = "a folder, not a file" if where == "folder" else "a parent of it is a file"
    assert exc.value.code == 2 and last.endswith(f"--out {out}: {want}"), last
