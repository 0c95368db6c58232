"""The nli-routing command line."""

from nli_routing.cli import main
from nli_routing.data.sci import load_sci


def test_list_shows_learners_and_methods(capsys):
    main(["list"])
    out = capsys.readouterr().out
    assert "qlearning" in out and "wp-signature" in out and "high" in out


def test_generate_sci_writes_loadable_data(tmp_path):
    main(["generate-sci", "--out", str(tmp_path), "--n_train", "40", "--n_validation", "10",
          "--n_test", "10", "--variants", "joint"])
    dsd = load_sci(tmp_path / "joint")
    assert [len(dsd[s]) for s in ("train", "validation", "test")] == [40, 10, 10]


def test_meta_values_starting_with_a_dash_are_taken_as_values():
    """Issue 31: the README's `--meta "-|+"` (argparse reads "-|+" as an option otherwise)."""
    from nli_routing.cli import attach_dash_values

    assert attach_dash_values(["predict", "m", "--meta", "-|+"]) == ["predict", "m", "--meta=-|+"]
    assert attach_dash_values(["--meta_fallback", "-|.7", "--premise", "-x"]) == ["--meta_fallback=-|.7", "--premise", "-x"]
    assert attach_dash_values(["--meta", "--input", "f"]) == ["--meta", "--input", "f"]  # a missing value stays an error
    assert attach_dash_values(["--meta", "+|-"]) == ["--meta", "+|-"]


def test_the_inference_path_does_not_import_the_data_libraries():
    """Issue 31: `nli-routing predict` pays for torch and transformers only (datasets, pandas and
    scikit-learn are imported by the code that reads data sets or fits clusters)."""
    import subprocess
    import sys

    code = ("import sys, nli_routing.cli, nli_routing.inference.predict, nli_routing.inference.io\n"
            "print(sorted(m for m in ('datasets', 'pandas', 'sklearn') if m in sys.modules))")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    assert res.stdout.strip().splitlines()[-1] == "[]"


def test_the_command_line_help_imports_no_torch():
    """Issue 31: `nli-routing --help` (and every subcommand's parser) is built without torch/transformers."""
    import subprocess
    import sys

    code = ("import sys\nfrom nli_routing.cli import main\n"
            "for argv in (['--help'], ['serve', '--help'], ['predict', '--help']):\n"
            "    try:\n        main(argv)\n    except SystemExit:\n        pass\n"
            "print(sorted(m for m in ('torch', 'transformers') if m in sys.modules))")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr[-2000:]
    assert res.stdout.strip().splitlines()[-1] == "[]"
