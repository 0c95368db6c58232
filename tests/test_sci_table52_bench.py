"""Smoke test of the Table 5.2 benchmark's step-time measurement (tiny random BERT, no real data)."""

import importlib
import math

import torch
from transformers import BertConfig, BertModel

from nli_routing.models.transformer import RoutedTransformerForNLI, TransformerNLIConfig
from nli_routing.training.loop import TrainConfig



def load_bench():
    return importlib.import_module("benchmarks.sci_table52")


def test_step_time_ratio_runs_on_a_tiny_bert():
    bench = load_bench()

    def make(route):
        torch.manual_seed(0)
        backbone = BertModel(BertConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                        intermediate_size=37, vocab_size=99))
        model = RoutedTransformerForNLI(TransformerNLIConfig(route=route, num_blocks=4, num_meta=4), backbone)
        bench.spread_routes(model)
        return model

    g = torch.Generator().manual_seed(0)
    ids = torch.randint(1, 99, (8, 9), generator=g)
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "token_type_ids": torch.zeros_like(ids),
             "labels": torch.randint(0, 3, (8,), generator=g), "meta": torch.arange(8) % 4}
    cfg = TrainConfig(block_optimizer="adam", lr=1e-3, router_lr_ratio=10.0, cpu=True)
    res = bench.step_time_ratio(make, batch, cfg, warmup=1, steps_per_block=1, repeats=2)
    assert res["ratio"] > 0 and math.isfinite(res["ratio"])
    assert len(res["round_ratios"]) == 2
    assert set(res["breakdown_ms"]) == {"none", "attention"}
    assert res["copies_used_per_position"] is not None and len(res["copies_used_per_position"]) == 2
