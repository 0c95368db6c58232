"""The Gradio app over HTTP on the loopback interface: the page is served, the pair endpoint returns the
predictor's label, probabilities and route, the batch-file endpoint writes one prediction per pair,
and a bad request comes back as an error that names the problem."""

from __future__ import annotations

import json
import os
import socket
import urllib.request

import pytest

gr = pytest.importorskip("gradio")
from gradio_client import Client, handle_file  # noqa: E402

from nli_routing.experiments.nli import DataArgs, prepare_sci, run_method  # noqa: E402
from nli_routing.inference import RoutedNLIPredictor  # noqa: E402
from nli_routing.inference.app import build_app  # noqa: E402
from nli_routing.models.nli import NLIModelConfig  # noqa: E402
from nli_routing.training.loop import TrainConfig  # noqa: E402

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    folder = tmp_path_factory.mktemp("app") / "wp-signature"
    prepared = prepare_sci(DataArgs(max_train_samples=120))
    run_method("wp-signature", prepared, NLIModelConfig(classifier_hidden=16, wp_depth=2),
               TrainConfig(epochs=1, batch_size=32, lr=2e-3, block_optimizer="adam", seed=0), 3, folder)
    app = build_app(folder)
    port = free_port()
    app.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True)
    url = f"http://127.0.0.1:{port}/"
    try:
        yield folder, url
    finally:
        app.close()


def test_the_page_is_served(served):
    _, url = served
    with urllib.request.urlopen(url, timeout=30) as resp:
        assert resp.status == 200
        assert "nli_routing" in resp.read().decode("utf-8", "replace")


def test_the_pair_endpoint_returns_label_probabilities_and_route(served):
    folder, url = served
    client = Client(url, verbose=False)
    probs, picture, details = client.predict("Ann managed to leave.", "Ann left.", "+|-", api_name="/predict")
    want = RoutedNLIPredictor.from_pretrained(folder).predict(
        {"premise": "Ann managed to leave.", "hypothesis": "Ann left.", "signature": "+|-"})[0]
    assert details["label"] == want["label"] and details["route"] == want["route"] and len(want["route"]["wp"]) == 2
    assert probs["label"] == want["label"]
    assert picture is not None  # the route picture (a plot payload)


def test_the_batch_file_endpoint_writes_one_prediction_per_pair(served, tmp_path):
    _, url = served
    src = tmp_path / "pairs.jsonl"
    pairs = [{"premise": f"Ann managed to leave {i}.", "hypothesis": "Ann left.", "signature": "+|-"} for i in range(5)]
    src.write_text("".join(json.dumps(p) + "\n" for p in pairs))
    out_file, table = Client(url, verbose=False).predict(handle_file(str(src)), api_name="/predict_file")
    rows = [json.loads(line) for line in open(out_file).read().splitlines()]
    assert len(rows) == 5 and len(table["data"]) == 5


def test_a_pair_without_its_meta_is_an_error_naming_the_field(served):
    _, url = served
    with pytest.raises(Exception, match="signature"):
        Client(url, verbose=False).predict("Ann managed to leave.", "Ann left.", None, api_name="/predict")
