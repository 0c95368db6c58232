"""Helpers shared by the test files (data builders, reference implementations, tiny models); test
files import from here, never from each other."""

from __future__ import annotations

import torch
from torch.utils.data import DataLoader

from nli_routing.data.encoding import NLICollator
from nli_routing.routing import RoutedLayer, TabularRouter, Trajectory

VOCAB, DIM = 50, 16


def batch(b=6, tp=5, th=4, num_meta=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    pm = torch.ones(b, tp, dtype=torch.bool)
    pm[0, 2:] = False  # a short premise
    pm[1] = False  # an empty premise
    return {
        "premise_ids": torch.randint(1, VOCAB, (b, tp), generator=g) * pm,
        "premise_mask": pm,
        "hypothesis_ids": torch.randint(1, VOCAB, (b, th), generator=g),
        "hypothesis_mask": torch.ones(b, th, dtype=torch.bool),
        "meta": torch.randint(0, num_meta, (b,), generator=g),
        "labels": torch.randint(0, 3, (b,), generator=g),
    }


def weight():
    w = torch.randn(VOCAB, DIM)
    w[0] = 0
    return w


def tiny_loader(n=48, seed=0):
    g = torch.Generator().manual_seed(seed)
    rows = [
        {"premise_ids": torch.randint(1, 50, (4,), generator=g).tolist(),
         "hypothesis_ids": torch.randint(1, 50, (3,), generator=g).tolist(),
         "label": int(torch.randint(0, 3, (1,), generator=g)), "signature": i % 3}
        for i in range(n)
    ]
    return DataLoader(rows, batch_size=8, collate_fn=NLICollator(0, "signature"))


def sgd_step(router: TabularRouter, traj: Trajectory, lr: float) -> None:
    opt = torch.optim.SGD(router.parameters(), lr=lr)
    opt.zero_grad()
    router.loss(traj).backward()
    opt.step()


def per_sample_reference(layer: RoutedLayer, x: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
    """Run every sample alone through the blocks its trajectory names (the obvious slow way)."""
    outs = []
    for i in range(x.shape[0]):
        xi = x[i : i + 1]
        for t in range(layer.depth):
            a = int(actions[i, t])
            if a < 0 or a == layer.stop_action:
                break
            xi = layer.step_blocks(t)[a](xi)
        outs.append(xi)
    return torch.cat(outs)


# ---------------------------------------------------------------------- every model kind, tiny
def tiny_bert():
    """A 2-layer BERT of hidden size 32 (random weights, no download)."""
    from transformers import BertConfig, BertModel

    torch.manual_seed(0)
    cfg = BertConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=37,
                     vocab_size=99, attn_implementation="sdpa")
    return BertModel(cfg).eval()


def pair_token_batch(b: int = 6, t: int = 7, num_meta: int = 3, seed: int = 0) -> dict:
    """Encoded pairs for a Transformer (``input_ids``, ``attention_mask``, ``token_type_ids``), padded."""
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(2, t + 1, (b,), generator=g)
    lengths[0] = t
    mask = (torch.arange(t) < lengths.unsqueeze(1)).long()
    return {
        "input_ids": torch.randint(1, 99, (b, t), generator=g) * mask,
        "attention_mask": mask,
        "token_type_ids": (torch.arange(t) >= lengths.unsqueeze(1) // 2).long() * mask,
        "meta": torch.randint(0, num_meta, (b,), generator=g),
        "labels": torch.randint(0, 3, (b,), generator=g),
    }


def image_batch(b: int = 6, num_meta: int = 3, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    return {"pixel_values": torch.randn(b, 1, 28, 28, generator=g),
            "meta": torch.arange(b) % num_meta, "labels": torch.randint(0, 2, (b,), generator=g)}


#: (kind, routed part) -> the names of the routed layers a forward records, in order
ROUTED_NAMES = {
    ("cbow", "wp"): ["wp"],
    ("cbow", "classifier"): ["classifier"],
    ("cbow", "wp+classifier"): ["wp", "classifier"],
    ("lstm", "i2h"): ["lstm-i2h"],
    ("lstm", "h2h"): ["lstm-h2h"],
    ("lstm", "classifier"): ["lstm-i2h", "classifier"],
    ("transformer", "attention"): ["encoder-attention"],
    ("transformer", "block"): ["encoder-block"],
    ("transformer", "lora"): ["encoder-lora"],
    ("transformer", "classifier"): ["classifier"],
    ("vision", "routing"): ["fc"],
    ("vision", "routing-recurrent"): ["fc"],
    ("vision", "fixed-random-conv3"): ["conv3"],
}


def build_model(kind: str, part: str, router: str = "tabular", learner: str = "qlearning", num_meta: int = 3):
    """A tiny model of every kind with ``part`` routed by ``router`` / ``learner``, and a batch for it."""
    from nli_routing.models.lstm import LSTMModelConfig, LSTMNLIModel
    from nli_routing.models.nli import NLIModelConfig, NLIRoutingModel
    from nli_routing.models.transformer import RoutedTransformerForNLI, TransformerNLIConfig
    from nli_routing.models.vision import VisionMTLConfig, VisionMTLModel

    common = dict(num_meta=num_meta, router=router, learner=learner, exploration="high", router_init=0.0)
    torch.manual_seed(0)
    if kind == "cbow":
        cfg = NLIModelConfig(route=part, classifier_hidden=8, wp_width=3, wp_depth=2, **common)
        return NLIRoutingModel(cfg, weight(), pad_id=0), batch(num_meta=num_meta)
    if kind == "lstm":
        route, lstm_route = ("classifier", "i2h") if part == "classifier" else ("none", part)
        cfg = LSTMModelConfig(route=route, lstm_route=lstm_route, lstm_hidden=8, lstm_depth=2, classifier_hidden=8,
                              **common)
        return LSTMNLIModel(cfg, weight(), pad_id=0), batch(num_meta=num_meta)
    if kind == "transformer":
        cfg = TransformerNLIConfig(route=part, num_blocks=2, noise_std=0.01, classifier_hidden=8, dropout=0.0,
                                   lora_rank=4, **common)
        model = RoutedTransformerForNLI(cfg, backbone=tiny_bert())
        if part == "lora":  # experts start at zero (all alike): make them differ so routes matter
            from nli_routing.routing.lowrank import LowRankBank

            with torch.no_grad():
                for m in model.modules():
                    if isinstance(m, LowRankBank):
                        m.B.normal_(0.0, 0.2)
        return model, pair_token_batch(num_meta=num_meta)
    if kind == "vision":
        cfg = VisionMTLConfig(method=part, conv_layers=3, conv_channels=4, fc_hidden=8, **common)
        return VisionMTLModel(cfg), image_batch(num_meta=num_meta)
    raise ValueError(f"unknown model kind {kind!r}")


def select(batch: dict, rows: slice) -> dict:
    """The rows ``rows`` of every tensor of a batch."""
    return {k: v[rows] for k, v in batch.items()}


def require_native_kernel() -> None:
    """Skip where the native CPU kernel cannot be built for want of a C++ compiler; fail where a compiler
    exists but the build or its self-check does not work (the kernel must build where it can)."""
    import shutil

    import pytest

    from nli_routing.routing.native import load_native_kernel, native_kernel_reason

    if load_native_kernel() is not None:
        return
    if not (shutil.which("c++") or shutil.which("g++")) or not shutil.which("ninja"):
        pytest.skip(f"no C++ compiler or ninja: {native_kernel_reason()}")
    pytest.fail(native_kernel_reason())


def assert_same_run(a, b, tol: float = 1e-5) -> None:
    """Two runs of a routed layer, each ``(output, actions, input gradient, parameter gradients)``: the same
    actions, the same number of parameter gradients, and values and gradients equal within ``tol``."""
    assert torch.equal(a[1], b[1]) and len(a[3]) == len(b[3])
    torch.testing.assert_close(a[0], b[0], rtol=tol, atol=tol)
    torch.testing.assert_close(a[2], b[2], rtol=tol, atol=tol)
    for ga, gb in zip(a[3], b[3]):
        torch.testing.assert_close(ga, gb, rtol=tol, atol=tol)
