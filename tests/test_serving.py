"""HTTP serving with micro-batching (issue 31): concurrent requests of mixed signatures share forwards
and get what the predictor gives each alone; a bad pair is answered alone; a full queue answers busy."""

from __future__ import annotations

import asyncio

import pytest
import torch
from transformers import AutoTokenizer

from nli_routing.inference.predict import RoutedNLIPredictor
from nli_routing.inference.serving import Busy, MicroBatcher, build_server
from nli_routing.models.embeddings import default_model_path
from nli_routing.models.nli import NLIModelConfig, NLIRoutingModel

SIGNATURES = ["+|-", "-|+", "o|o"]


@pytest.fixture(scope="module")
def predictor():
    tok = AutoTokenizer.from_pretrained(default_model_path())
    torch.manual_seed(0)
    model = NLIRoutingModel(NLIModelConfig(route="wp", num_meta=3, classifier_hidden=8, router_init=0.0,
                                           exploration="none"), torch.randn(tok.vocab_size, 16), pad_id=tok.pad_token_id)
    with torch.no_grad():  # tables that differ per signature, so mixed batches take different routes
        model.routers()[0].table.copy_(torch.randn_like(model.routers()[0].table))
    model.describe(label_names=["entails", "contradicts", "permits"], meta_names=SIGNATURES, meta_column="signature")
    return RoutedNLIPredictor(model.eval(), tok)


def pairs(n: int) -> list[dict]:
    return [{"premise": f"Ann managed to leave the house number {i}", "hypothesis": f"Ann left house {i % 7}",
             "signature": SIGNATURES[i % 3]} for i in range(n)]


def test_concurrent_requests_share_forwards_and_equal_single_predictions(predictor):
    want = [predictor.predict_batch([p])[0] for p in pairs(20)]

    async def go():
        batcher = MicroBatcher(predictor, max_batch=8, max_wait_ms=20)
        await batcher.start()
        try:
            got = await asyncio.gather(*(batcher.submit(p) for p in pairs(20)))
        finally:
            await batcher.stop()
        return got, batcher.counts

    got, counts = asyncio.run(go())
    assert counts["forwards"] <= 4 and counts["batched_pairs"] == 20 and counts["served"] == 20
    assert len({tuple(g["route"]["wp"]) for g in got}) > 1  # the batch mixed routes
    for g, w in zip(got, want):
        assert (g["label"], g["route"], g["meta"]) == (w["label"], w["route"], w["meta"])
        assert g["score"] == pytest.approx(w["score"], abs=1e-6)


def test_a_bad_pair_is_answered_alone_and_a_full_queue_answers_busy(predictor):
    async def go():
        batcher = MicroBatcher(predictor, max_batch=8, max_wait_ms=5, queue_size=3)
        await batcher.start()
        try:
            good = pairs(2)
            bad = {"premise": "x", "hypothesis": "y", "signature": "no|such"}
            out = await asyncio.gather(batcher.submit(good[0]), batcher.submit(bad), batcher.submit(good[1]),
                                       return_exceptions=True)
            assert isinstance(out[1], ValueError) and "no|such" in str(out[1])
            assert out[0]["meta"] == "+|-" and out[2]["meta"] == "-|+"
            burst = await asyncio.gather(*(batcher.submit(p) for p in pairs(12)), return_exceptions=True)
        finally:
            await batcher.stop()
        return burst, batcher.counts

    burst, counts = asyncio.run(go())
    busy = [b for b in burst if isinstance(b, Busy)]
    assert busy and all("busy" in str(b) for b in busy)
    assert len(busy) + sum(isinstance(b, dict) for b in burst) == 12  # every request answered
    assert counts["busy"] == len(busy) and counts["bad_input"] == 1


def test_the_http_api(predictor):
    from fastapi.testclient import TestClient

    with TestClient(build_server(predictor, with_app=False)) as client:
        ok = client.post("/predict", json=pairs(1)[0])
        assert ok.status_code == 200 and ok.json()["meta"] == "+|-" and set(ok.json()["route"]) == {"wp"}
        bad = client.post("/predict", json={"premise": "x", "hypothesis": "y"})
        assert bad.status_code == 400 and "signature" in bad.json()["error"]
        assert client.post("/predict", content=b"nope").status_code == 400
        health = client.get("/health").json()
        assert health["served"] == 1 and health["bad_input"] == 1
