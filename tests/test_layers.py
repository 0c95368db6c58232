"""The package's layers: imports only point down (DESIGN.md), checked by parsing every module."""

import ast
from pathlib import Path

import nli_routing

ROOT = Path(nli_routing.__file__).parent
#: bottom to top; a module may import its own layer and the layers below it
LAYERS = ["serialization", "routing", "models", "data", "dispatch", "analysis", "training", "metrics", "experiments", "inference",
          "cli"]


def imported_layers(path: Path, root: Path = ROOT) -> set[str]:
    """The top-level subpackages of ``nli_routing`` that ``path`` imports (relative or absolute)."""
    rel = path.relative_to(root).parts
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level:
            base = list(rel[:-1])[: len(rel) - node.level]
            parts = base + (node.module.split(".") if node.module else [a.name for a in node.names][:1])
            if parts:
                out.add(parts[0])
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("nli_routing."):
            out.add(node.module.split(".")[1])
        elif isinstance(node, ast.Import):
            out |= {a.name.split(".")[1] for a in node.names if a.name.startswith("nli_routing.")}
    return {name.removesuffix(".py") for name in out}


def layer_of(path: Path, root: Path = ROOT) -> str:
    return path.relative_to(root).parts[0].removesuffix(".py")


def upward_imports(root: Path = ROOT) -> list[str]:
    out = []
    for path in sorted(root.rglob("*.py")):
        if path == root / "__init__.py":
            continue
        here = LAYERS.index(layer_of(path, root))
        for target in sorted(imported_layers(path, root)):
            if target in LAYERS and LAYERS.index(target) > here:
                out.append(f"{path.relative_to(root)} imports {target}")
    return out


def test_every_module_belongs_to_a_layer():
    names = {layer_of(p) for p in ROOT.rglob("*.py")} - {"__init__"}
    assert names <= set(LAYERS), f"modules outside the layer map: {sorted(names - set(LAYERS))}"


def test_imports_only_point_down():
    upward = upward_imports()
    assert not upward, "upward imports:\n" + "\n".join(upward)


def test_the_checker_sees_an_upward_import(tmp_path):
    """The check itself can fail: a module of models/ importing training is caught."""
    fake = tmp_path / "nli_routing"
    (fake / "models").mkdir(parents=True)
    (fake / "models" / "bad.py").write_text("from ..training.loop import train\nfrom ..routing import Router\n")
    (fake / "models" / "ok.py").write_text("import nli_routing.routing.layer\nfrom ..serialization import load_checkpoint\n")
    assert upward_imports(fake) == ["models/bad.py imports training"]


def test_every_subclass_calls_its_parents_init():
    """No ``nn.Module.__init__(self)`` that skips a parent's ``__init__`` (DESIGN.md, engine rules)."""
    skipping = [str(p.relative_to(ROOT)) for p in ROOT.rglob("*.py") if "nn.Module.__init__(self)" in p.read_text()]
    assert not skipping, f"modules that skip their parent's __init__: {skipping}"


def test_every_model_kind_is_a_routed_model():
    from nli_routing.models.base import RoutedModel
    from nli_routing.models.lstm import LSTMNLIModel
    from nli_routing.models.nli import NLIRoutingModel
    from nli_routing.models.transformer.model import RoutedTransformerForNLI
    from nli_routing.models.vision import VisionMTLModel

    for cls in (NLIRoutingModel, LSTMNLIModel, RoutedTransformerForNLI, VisionMTLModel):
        assert issubclass(cls, RoutedModel), cls.__name__


def test_no_load_path_unpickles():
    """Model folders, checkpoints and routing records are read without unpickling: no
    ``weights_only=False``, no ``pickle``, no ``allow_pickle=True`` anywhere in the package."""
    offenders = []
    for path in sorted(ROOT.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.keyword) and node.arg in ("weights_only", "allow_pickle"):
                value = node.value
                if not (isinstance(value, ast.Constant) and value.value is (node.arg == "weights_only")):
                    offenders.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.arg}")
            elif isinstance(node, (ast.Import, ast.ImportFrom)):
                names = [a.name for a in node.names] + [getattr(node, "module", None) or ""]
                if any(n.split(".")[0] in ("pickle", "dill", "cloudpickle") for n in names):
                    offenders.append(f"{path.relative_to(ROOT)}:{node.lineno} imports pickle")
    assert not offenders, offenders


def test_no_sys_path_tricks_in_tests_benchmarks_or_recipes():
    """Scripts import the installed package (and, run as scripts, their own folder); nothing edits sys.path."""
    repo = ROOT.parent
    found = [f"{p.relative_to(repo)}:{i}" for folder in ("tests", "benchmarks", "recipes")
             for p in sorted((repo / folder).rglob("*.py"))
             for i, line in enumerate(p.read_text().splitlines(), 1)
             if "sys.path." in line and p.name != "test_layers.py"]
    assert not found, "sys.path edits: " + ", ".join(found)


#: files that load code by file path, and why (none of them a recipe or a benchmark of this project)
PATH_LOADERS_ALLOWED = {
    "benchmarks/pytorchrouting_compare.py": "loads the external PytorchRouting checkout (not a package) to time it",
}
PATH_LOADING = ("spec_from_file_location", "run_path(", "SourceFileLoader", "exec(open(", "machinery.SourceFileLoader")


def path_loaders(repo: Path) -> list[str]:
    """Files of tests/, benchmarks/, recipes/ and the package that load a Python file by its path."""
    found = []
    for folder in ("tests", "benchmarks", "recipes", "nli_routing"):
        for path in sorted((repo / folder).rglob("*.py")):
            rel = str(path.relative_to(repo))
            if rel == "tests/test_layers.py" or rel in PATH_LOADERS_ALLOWED:
                continue
            text = path.read_text()
            found += [f"{rel}: {word}" for word in PATH_LOADING if word in text]
    return found


def test_no_script_is_loaded_by_file_path():
    """Issue 30: recipes and benchmarks are packages; tests, benchmarks and recipes import them by name."""
    repo = ROOT.parent
    assert (repo / "recipes" / "__init__.py").exists() and (repo / "benchmarks" / "__init__.py").exists()
    assert not path_loaders(repo), "\n".join(path_loaders(repo))


def test_the_path_loading_check_can_fail(tmp_path):
    (tmp_path / "tests").mkdir()
    (tmp_path / "tests" / "test_x.py").write_text('import runpy\nrunpy.run_path("recipes/a.py")\n')
    assert path_loaders(tmp_path) == ["tests/test_x.py: run_path("]


def test_the_package_imports_nothing_for_its_side_effects():
    """No registry filled by a side-effect import: a saved model's parts are rebuilt by the model itself;
    the public names of ``nli_routing`` are imported on first use, and every one of them resolves."""
    import subprocess
    import sys

    code = "import sys, nli_routing; print(sorted(m for m in sys.modules if m.startswith('nli_routing.')))"
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0 and res.stdout.strip() == "[]", res.stdout + res.stderr[-1000:]
    assert not [p for p in ROOT.rglob("*.py") if "DISPATCHER_BUILDERS" in p.read_text()]
    for name in nli_routing.__all__:
        assert getattr(nli_routing, name) is not None, name
