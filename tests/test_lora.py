"""route="lora": b routed low-rank experts per linear layer of a pretrained Transformer. With one expert
it is a LoRA layer (peft as the reference); every implementation equals each row alone through its
expert; the experts start as the pretrained layer; parameter counts."""

from __future__ import annotations

import pytest
import torch
from transformers import BertConfig, BertModel

from nli_routing.models.transformer import (
    RoutedLoRALinear,
    RoutedTransformerConfig,
    RoutedTransformerForNLI,
    TransformerNLIConfig,
    count_parameters,
    inject_routing,
    routing_context,
)
from nli_routing.routing.execution import execution_for
from nli_routing.routing.lowrank import LowRankBank

from .helpers import pair_token_batch, require_native_kernel, tiny_bert


@pytest.mark.parametrize("impl", ["grouped_mm", "loop", "tiled", "gather", "native"])
def test_low_rank_bank_equals_each_row_alone(impl):
    if impl == "native":
        require_native_kernel()
    torch.manual_seed(0)
    bank = LowRankBank(3, 12, 10, rank=4, impl=impl)
    with torch.no_grad():
        bank.B.normal_()
    x = torch.randn(5, 7, 12)
    groups = torch.tensor([2, 0, 1, 2, 0])
    scale = torch.tensor([1.0, 0.5, 2.0, 1.0, 1.5])
    y = execution_for(bank)(bank, x, groups, scale, False)
    for i in range(5):
        torch.testing.assert_close(y[i], bank.expert_forward(x[i], int(groups[i])) * scale[i])
    (y.sum()).backward()
    assert bank.A.grad is not None and bank.B.grad.abs().sum() > 0


def test_experts_start_as_the_pretrained_layer_and_add_few_parameters():
    torch.manual_seed(0)
    ids = pair_token_batch()
    plain = tiny_bert()
    ref = plain(input_ids=ids["input_ids"], attention_mask=ids["attention_mask"]).last_hidden_state
    routed = inject_routing(tiny_bert(), RoutedTransformerConfig(route="lora", num_blocks=4, num_meta=3, lora_rank=2))
    with routing_context(routed, ids["meta"]):
        out = routed(input_ids=ids["input_ids"], attention_mask=ids["attention_mask"]).last_hidden_state
    torch.testing.assert_close(out, ref)  # B = 0: every expert is the pretrained layer
    layers = [m for m in routed.modules() if isinstance(m, RoutedLoRALinear)]
    assert len(layers) == 12 and all(not m.base.weight.requires_grad for m in layers)  # 6 linears x 2 layers, frozen
    model = RoutedTransformerForNLI(TransformerNLIConfig(route="lora", num_blocks=4, num_meta=3, lora_rank=2,
                                                         classifier_hidden=8), backbone=tiny_bert())
    counts = count_parameters(model)
    # 12 layers x 4 experts x rank 2 x (in + out)
    want = 4 * 2 * sum(m.in_features + m.out_features for m in (l.base for l in layers))
    assert counts["copies"] == want
    with pytest.raises(ValueError, match="route='lora' routes linear layers"):
        inject_routing(tiny_bert(), RoutedTransformerConfig(route="lora", target_modules=[r"encoder\.layer\.\d+"]))


def test_one_expert_equals_a_peft_lora_layer():
    peft = pytest.importorskip("peft")
    torch.manual_seed(0)
    cfg = BertConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=37, vocab_size=99)
    base = BertModel(cfg).eval()
    targets = [r"encoder\.layer\.\d+\.attention\.self\.(query|value)"]
    ours = inject_routing(BertModel(cfg).eval(), RoutedTransformerConfig(route="lora", num_blocks=1, num_meta=1,
                                                                        lora_rank=4, lora_alpha=8.0,
                                                                        target_modules=targets))
    ours.load_state_dict(base.state_dict(), strict=False)  # same pretrained weights (base.* under the wrapper)
    for name, module in ours.named_modules():
        if isinstance(module, RoutedLoRALinear):
            module.base.load_state_dict(base.get_submodule(name).state_dict())
    ref = peft.get_peft_model(base, peft.LoraConfig(r=4, lora_alpha=8, target_modules=["query", "value"],
                                                    lora_dropout=0.0))
    with torch.no_grad():
        for name, module in ours.named_modules():
            if isinstance(module, RoutedLoRALinear):
                lora = ref.base_model.model.get_submodule(name)
                module.experts.B.normal_()
                lora.lora_A["default"].weight.copy_(module.experts.A[0].t())
                lora.lora_B["default"].weight.copy_(module.experts.B[0].t())
    ids = pair_token_batch(num_meta=1)
    want = ref(input_ids=ids["input_ids"], attention_mask=ids["attention_mask"]).last_hidden_state
    with routing_context(ours, torch.zeros(6, dtype=torch.long)):
        got = ours(input_ids=ids["input_ids"], attention_mask=ids["attention_mask"]).last_hidden_state
    assert not torch.allclose(want, base(input_ids=ids["input_ids"]).last_hidden_state)  # the deltas matter
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-4)


def _conflicting_tasks(g: torch.Generator, n: int = 64) -> dict:
    """Two tasks on the same inputs with opposite label maps: the class of task 0 is the first token
    mod 3, task 1's is the next class. Shared experts cannot solve both; one expert per task can."""
    ids = torch.randint(5, 99, (n, 6), generator=g)
    meta = torch.randint(0, 2, (n,), generator=g)
    base = ids[:, 0] % 3
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "token_type_ids": torch.zeros_like(ids),
            "labels": torch.where(meta == 0, base, (base + 1) % 3), "meta": meta}


def test_router_finds_the_expert_of_each_task():
    """Known answer: experts and head are first trained with oracle routes (task 0 -> expert 1,
    task 1 -> expert 0: not the lowest index, so ties do not find it by accident); then the table
    is reset to zeros, everything but the router is frozen, and Q-learning with the default reward
    must find the oracle at every one of the 12 routed linear layers."""
    from nli_routing.models.transformer import get_controller
    from nli_routing.routing.exploration import get_schedule
    from nli_routing.training.loop import TrainConfig, make_optimizers, train_step

    torch.manual_seed(0)
    model = RoutedTransformerForNLI(TransformerNLIConfig(route="lora", num_blocks=2, num_meta=2, lora_rank=4,
                                                         classifier_hidden=16, dropout=0.0, exploration="low"),
                                    backbone=tiny_bert()).train()
    router = get_controller(model).router
    oracle = torch.tensor([1, 0]).unsqueeze(1).expand(2, router.table.shape[1])
    g = torch.Generator().manual_seed(0)

    def accuracy() -> list[float]:
        model.eval()
        test = _conflicting_tasks(g, 512)
        with torch.no_grad():
            pred = model(**test).logits.argmax(-1)
        model.train()
        return [(pred == test["labels"])[test["meta"] == m].float().mean().item() for m in (0, 1)]

    with torch.no_grad():
        router.table.zero_().scatter_(2, oracle.unsqueeze(-1), 1.0)
    router.table.requires_grad_(False)
    schedule, router.schedule = router.schedule, get_schedule("none")
    cfg = TrainConfig(cpu=True, progress=False, block_optimizer="adam", lr=3e-3, router_lr_ratio=3.0)
    blocks, routers = make_optimizers(model, cfg)
    for step in range(150):
        train_step(model, _conflicting_tasks(g), blocks, routers, cfg, step=step)
    assert min(accuracy()) > 0.95  # the oracle routes solve both tasks

    with torch.no_grad():
        router.table.zero_()
    for p in model.parameters():
        p.requires_grad_(False)
    router.table.requires_grad_(True)
    router.schedule = schedule
    blocks, routers = make_optimizers(model, cfg)
    for step in range(150):
        train_step(model, _conflicting_tasks(g), blocks, routers, cfg, step=step)
    assert torch.equal(router.greedy_policy(), oracle)
    assert min(accuracy()) > 0.95
