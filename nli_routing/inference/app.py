"""A small Gradio app for a saved routed model: one pair (label, probabilities, the route as a picture)
and a batch-file tab. Gradio is an optional extra (``pip install -e ".[app]" in the checkout, or pip install gradio``).

    nli-routing app outputs/sci_wp_dispatch/wp-signature            # http://127.0.0.1:7860
    python -m nli_routing.inference.app MODEL                         # the same (e.g. as a Space's app.py)
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path
from typing import Any, Sequence

from ..analysis.plots import plot_route
from .io import read_pairs, write_predictions
from .predict import RoutedNLIPredictor

__all__ = ["build_app", "main"]

NO_META = "(none: use the fallback)"
#: the pair shown when the page opens (an SCI test pair: "be too afraid to", signature -|o)
EXAMPLE = {"premise": "Priya was too afraid to attend the meeting on Monday",
           "hypothesis": "Priya did not attend the meeting on Monday", "meta": "-|o"}


def _gradio():
    try:
        import gradio as gr
    except ImportError:  # pragma: no cover - depends on the extra
        raise ImportError('the app needs Gradio: pip install -e ".[app]" in the checkout, or pip install gradio (or pip install gradio)') from None
    return gr


def layer_shapes(predictor: RoutedNLIPredictor) -> dict[str, tuple[int, int, int | None]]:
    """Routed layer name -> (depth, number of actions, stop action) for :func:`plot_route`."""
    return {name: (int(layer.depth), int(layer.num_actions), layer.stop_action)
            for name, layer in predictor.model.named_routed_layers()}


def build_app(model: str | Path | RoutedNLIPredictor, meta_fallback: str | None = None):
    """The app's ``gr.Blocks`` for a saved model folder / Hub id (or a predictor)."""
    gr = _gradio()
    predictor = model if isinstance(model, RoutedNLIPredictor) else RoutedNLIPredictor.from_pretrained(model, meta_fallback)
    shapes = layer_shapes(predictor)
    name = Path(str(predictor.model.name_or_path or "routed model")).name
    needs = predictor.model.needs_meta and predictor.dispatches is None
    field = predictor.meta_field

    def predict_one(premise: str, hypothesis: str, meta: str | None):
        pair: dict[str, Any] = {"premise": premise or "", "hypothesis": hypothesis or ""}
        if meta and meta != NO_META:
            pair[field] = meta
        try:
            pred = predictor.predict_batch([pair])[0]
        except ValueError as err:
            raise gr.Error(str(err)) from None
        fig = plot_route(pred["route"], shapes, title=f"route ({pred['meta_source']} {field}: {pred['meta']})")
        return pred["probabilities"], fig, pred

    def predict_file(file: Any):
        if file is None:
            raise gr.Error("upload a .jsonl, .csv or .tsv file of pairs first")
        try:
            rows = predictor.predict(read_pairs(getattr(file, "name", file)), batch_size=64)
        except (ValueError, FileNotFoundError) as err:
            raise gr.Error(str(err)) from None
        out = Path(tempfile.mkdtemp()) / "predictions.jsonl"
        write_predictions(rows, out)
        table = [[r["label"], round(r["score"], 4), r["meta"], r["meta_source"], json.dumps(r["route"])] for r in rows]
        return str(out), table

    with gr.Blocks(title=f"nli_routing: {name}") as app:
        gr.Markdown(f"## Routed NLI: {name}\n"
                    f"Label names {list(predictor.labels.values())}; routed layers {list(shapes) or 'none'}; "
                    + ("meta chosen by the model's dispatcher." if predictor.dispatches else
                       f"routes on **{field}**." if needs else "reads no meta labels."))
        with gr.Tab("Pair"):
            premise = gr.Textbox(label="premise", value=EXAMPLE["premise"])
            hypothesis = gr.Textbox(label="hypothesis", value=EXAMPLE["hypothesis"])
            choices = ([NO_META] if predictor.meta_fallback is not None else []) + predictor.meta_names
            first = EXAMPLE["meta"] if EXAMPLE["meta"] in choices else (choices[0] if choices else None)
            meta = gr.Dropdown(choices=choices, value=first, label=field,
                               visible=needs, allow_custom_value=False)
            button = gr.Button("Predict", variant="primary")
            with gr.Row():
                probs = gr.Label(label="label", num_top_classes=len(predictor.labels))
                picture = gr.Plot(label="route")
            details = gr.JSON(label="prediction")
            button.click(predict_one, [premise, hypothesis, meta], [probs, picture, details], api_name="predict")
            if not needs or choices:  # the example pair is predicted when the page opens
                app.load(predict_one, [premise, hypothesis, meta], [probs, picture, details], api_name=False)
        with gr.Tab("Batch file"):
            upload = gr.File(label="pairs (.jsonl, .csv, .tsv)", file_types=[".jsonl", ".csv", ".tsv"])
            run = gr.Button("Predict the file")
            result = gr.File(label="predictions.jsonl")
            preview = gr.Dataframe(headers=["label", "score", "meta", "meta source", "route"], label="predictions")
            run.click(predict_file, [upload], [result, preview], api_name="predict_file")
    return app


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="nli-routing app", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(parser)
    args = parser.parse_args(argv)
    run(args)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", help="saved model folder or Hub id")
    parser.add_argument("--host", default="127.0.0.1", help="interface to listen on (0.0.0.0 for a Space)")
    parser.add_argument("--port", type=int, default=7860, help="port")
    parser.add_argument("--meta_fallback", default=None, help="meta class for pairs without one (default: an error)")


def run(args: argparse.Namespace) -> None:
    if not 0 < args.port < 65536:
        raise ValueError(f"--port must be in 1..65535, got {args.port}")
    build_app(args.model, args.meta_fallback).launch(server_name=args.host, server_port=args.port)


if __name__ == "__main__":
    main()
