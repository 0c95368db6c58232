"""The ``nli-routing`` command line: small utilities around the library.

    nli-routing generate-sci --out nli_routing/data/sci_synthetic      # the project's implicative data
    nli-routing list                                       # registered learners and recipe methods
    nli-routing analyze RUN_DIR --by signature             # path overlap, routing map, entropy, plots
    nli-routing convert OLD_RUN_DIR OUT_DIR                # model.pt of older versions -> save_pretrained folder
    nli-routing predict MODEL --input pairs.jsonl --output preds.jsonl    # labels and routes of new pairs
    nli-routing predict MODEL --premise "..." --hypothesis "..." --meta "+|-"
    nli-routing app MODEL                                  # the Gradio app (pip install -e ".[app]" in the checkout, or pip install gradio)
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Sequence


def _list(_: argparse.Namespace) -> None:
    from .routing import EXPLORATION_PRESETS, LEARNERS
    from .experiments.nli import METHODS

    print("learners:    " + ", ".join(sorted(LEARNERS)))
    print("exploration: " + ", ".join(f"{k} {v.to_dict()}" for k, v in EXPLORATION_PRESETS.items()))
    print("SCI methods: " + ", ".join(sorted(METHODS)))


def _analyze(args: argparse.Namespace) -> None:
    from .analysis.report import analyze_run

    if args.dpi < 1:
        raise ValueError(f"--dpi must be >= 1, got {args.dpi}")
    result = analyze_run(args.run_dir, by=args.by, split=args.split, out_dir=args.out, match=args.match,
                         policy=args.policy, temperature=args.temperature, dpi=args.dpi,
                         vector=None if args.vector == "none" else args.vector)
    for row in result.get("dominant_paths", []):
        print(f"{row['class']:>14}  path {row['path']:<12} share {row['share']:.2f}  samples {row['samples']}")
    for layer, stats in result.get("entropy", {}).items():
        print(f"{layer}: selection entropy {stats['overall']:.2f} bits, perplexity {stats['perplexity']:.2f} "
              f"(effective blocks per depth), per class {stats['per_meta']:.2f} bits")
    print(f"{len(result['files'])} files written to {Path(result['files'][-1]).parent}")


def _convert(args: argparse.Namespace) -> None:
    from .models.convert import convert_run_folder

    model = convert_run_folder(args.run_dir, args.out_dir, pad_id=args.pad_id)
    print(f"{type(model).__name__} written to {args.out_dir} (load it with from_pretrained)")


def _predict(args: argparse.Namespace) -> None:
    from .inference.io import read_pairs, write_predictions
    from .inference.predict import RoutedNLIPredictor

    if (args.input is None) == (args.premise is None):
        raise ValueError("give either --input FILE or --premise (with --hypothesis)")
    if args.premise is not None and args.hypothesis is None:
        raise ValueError("--premise needs --hypothesis")
    if args.input is None and args.meta is None:
        pairs = [{"premise": args.premise, "hypothesis": args.hypothesis}]
    elif args.input is None:
        pairs = [{"premise": args.premise, "hypothesis": args.hypothesis, "meta": args.meta}]
    else:
        if args.hypothesis is not None or args.meta is not None:
            raise ValueError("--hypothesis and --meta go with --premise; with --input every pair has its own fields")
        pairs = read_pairs(args.input)
    _check_output(args.output)
    predictor = RoutedNLIPredictor.from_pretrained(args.model, meta_fallback=args.meta_fallback)
    rows = predictor.predict(pairs, batch_size=args.batch_size, progress=args.output is not None)
    write_predictions(rows, args.output)
    if args.output is not None:
        note = f" ({predictor.fallbacks} with the fallback meta {args.meta_fallback!r})" if predictor.fallbacks else ""
        print(f"{len(rows)} predictions written to {args.output}{note}")


def _app(args: argparse.Namespace) -> None:
    from .inference.app import run

    run(args)


class _OneLineParser(argparse.ArgumentParser):
    """argparse's errors as one line, ``nli-routing <command>: error: <message>``, exit status 2, instead of
    the usage block before the message."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (--help lists the options)\n")


def _check_output(path: str | None) -> None:
    """Refuse an --output that cannot be written before the model loads."""
    if path is None:
        return
    out = Path(path)
    if out.is_dir():
        raise ValueError(f"--output {out}: is a folder; give a .jsonl file")
    if any(p.exists() and not p.is_dir() for p in out.parents):
        raise ValueError(f"--output {out}: a parent of it is a file")


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


#: options whose values may start with "-" (signatures such as "-|+", "-|.7"; text starting with a dash)
DASH_VALUE_OPTIONS = ("--meta", "--meta_fallback", "--premise", "--hypothesis")


def attach_dash_values(argv: list[str]) -> list[str]:
    """``["--meta", "-|+"]`` -> ``["--meta=-|+"]``: argparse reads a value starting with "-" as an option,
    so ``--meta "-|+"`` would fail with "expected one argument". A following token is joined when it
    starts with a single dash and no letter (not an option such as ``-h`` or ``--input``)."""
    out: list[str] = []
    i = 0
    while i < len(argv):
        token = argv[i]
        nxt = argv[i + 1] if i + 1 < len(argv) else None
        if (token in DASH_VALUE_OPTIONS and nxt is not None and nxt.startswith("-") and not nxt.startswith("--")
                and not nxt[1:2].isalpha()):
            out.append(f"{token}={nxt}")
            i += 2
            continue
        out.append(token)
        i += 1
    return out


def _serve(args: argparse.Namespace) -> None:
    from .inference.serving import run

    run(args)


def main(argv: Sequence[str] | None = None) -> None:
    argv = attach_dash_values(list(sys.argv[1:] if argv is None else argv))
    parser = _OneLineParser(prog="nli-routing", description=__doc__,
                            formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_OneLineParser)
    sub.add_parser("generate-sci", help="generate SCI-style implicative data (see --help)", add_help=False)
    sub.add_parser("list", help="list learners, exploration presets and SCI methods").set_defaults(func=_list)
    analyze = sub.add_parser(
        "analyze", help="routing analyses of a training run: path overlap, routing map, entropy, dispatch, policies",
        description="Reads RUN_DIR/routing_<split>.npz (and model.safetensors, or an older model.pt, for the tabular policies) and writes PNG "
        "(and PDF or SVG) heatmaps, CSV and JSON (see nli_routing.analysis.report).",
    )
    analyze.add_argument("run_dir", help="output folder of a training run (metrics.json, routing_*.npz, config.json + model.safetensors)")
    analyze.add_argument("--by", default="meta", choices=["signature", "genre", "meta", "dispatch"],
                         help="group samples by the meta column (signature/genre/meta) or by the dispatcher's choice")
    analyze.add_argument("--split", default="test", help="which routing record: routing_<split>.npz")
    analyze.add_argument("--out", default=None, help="output folder (default RUN_DIR/analysis_<split>_<by>)")
    analyze.add_argument("--match", default="depth", choices=["depth", "module"],
                         help="overlap counts the same module at the same depth, or shared modules at any depth")
    analyze.add_argument("--policy", default="greedy", choices=["greedy", "softmax", "table"],
                         help="policy of a router table for the cosine similarity (greedy one-hot argmax by default)")
    analyze.add_argument("--temperature", type=float, default=1.0, help="softmax temperature (--policy softmax)")
    analyze.add_argument("--dpi", type=int, default=150, help="resolution of the PNG figures")
    analyze.add_argument("--vector", default="pdf", choices=["pdf", "svg", "none"],
                         help="vector copy of every figure beside its PNG (for papers)")
    analyze.set_defaults(func=_analyze)
    convert = sub.add_parser(
        "convert", help="convert an older run folder (model_config.json + model.pt) into a save_pretrained folder",
        description="Reads RUN_DIR/model_config.json and RUN_DIR/model.pt (weights-only: no code is unpickled) "
        "and writes OUT_DIR/config.json + model.safetensors, which from_pretrained and AutoModel load.",
    )
    convert.add_argument("run_dir", help="run folder of an older nli_routing (model_config.json, model.pt)")
    convert.add_argument("out_dir", help="where the converted model folder goes")
    convert.add_argument("--pad_id", type=int, default=0, help="padding token id of the run's vocabulary (0 in every recipe)")
    convert.set_defaults(func=_convert)
    predict = sub.add_parser(
        "predict", help="predict labels and routes of new premise/hypothesis pairs with a saved model",
        description="MODEL is a saved model folder (a run folder of a recipe) or a Hub id. Writes one JSON "
        "object per pair: label, score, probabilities, the route of every routed layer, the meta class and "
        "where it came from (given, dispatched, fallback, none), and the dispatcher's choice.",
    )
    predict.add_argument("model", help="saved model folder or Hub id")
    predict.add_argument("--input", default=None, help="pairs file: .jsonl, .json (a list of objects), .csv or .tsv (premise, hypothesis, meta columns)")
    predict.add_argument("--output", default=None, help="predictions .jsonl (default: stdout)")
    predict.add_argument("--premise", default=None, help="one pair's premise (instead of --input)")
    predict.add_argument("--hypothesis", default=None, help="one pair's hypothesis")
    predict.add_argument("--meta", default=None, help="one pair's meta class (signature, genre) name or index")
    predict.add_argument("--meta_fallback", default=None,
                         help="meta class for pairs without a (known) meta value (counted); default: an error")
    predict.add_argument("--batch_size", type=_positive_int, default=64, help="pairs per forward pass")
    predict.set_defaults(func=_predict)
    app = sub.add_parser("app", help="a Gradio web app for a saved model (pair and batch-file tabs)",
                         description="Serves the model's app: a pair tab (label, probabilities, the route as a "
                         "picture) and a batch-file tab. Needs Gradio (pip install -e \".[app]\" in the checkout, or pip install gradio).")
    app.add_argument("model", help="saved model folder or Hub id")
    app.add_argument("--host", default="127.0.0.1", help="interface to listen on (0.0.0.0 for a Space)")
    app.add_argument("--port", type=int, default=7860, help="port (1-65535)")
    app.add_argument("--meta_fallback", default=None, help="meta class for pairs without one (default: an error)")
    app.set_defaults(func=_app)
    serve = sub.add_parser("serve", help="serve a saved model over HTTP with micro-batching (POST /predict)",
                           description="Requests arriving within --max_wait_ms share one forward (any meta); a full "
                           "queue answers 503 busy. The Gradio app is mounted at /app when Gradio is installed.")
    from .inference.serving import add_arguments as serving_arguments  # (argparse only: no heavy import)

    serving_arguments(serve)
    serve.set_defaults(func=_serve)
    if argv and argv[0] == "generate-sci":
        from .data.synthetic import main as generate

        try:
            generate(argv[1:])
        except (ValueError, OSError) as err:
            parser.exit(2, f"nli-routing generate-sci: error: {err}\n")
        return
    args = parser.parse_args(argv)
    try:
        args.func(args)
    except (ValueError, FileNotFoundError, TypeError, OSError, ImportError) as err:  # bad input: one clear line, no traceback
        parser.exit(2, f"nli-routing {args.command}: error: {err}\n")


if __name__ == "__main__":
    main()
