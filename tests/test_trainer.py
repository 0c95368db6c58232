"""transformers.Trainer on routed models: a plain Trainer leaves the routers untrained, RoutingTrainer
trains them, and on a tiny run it ends exactly where the project's own loop does (same data order,
optimizers, learning rates; no clipping, constant learning rate)."""

from __future__ import annotations

import pytest
import torch
from torch.utils.data import SequentialSampler
from transformers import Trainer, TrainingArguments

from nli_routing.data.encoding import NLICollator
from nli_routing.models.nli import NLIModelConfig, NLIRoutingModel
from nli_routing.training.loop import TrainConfig, train
from nli_routing.training.trainer import RoutingTrainer

from .helpers import tiny_loader, weight


def make_model() -> NLIRoutingModel:
    torch.manual_seed(0)
    cfg = NLIModelConfig(route="wp", wp_width=3, num_meta=3, classifier_hidden=8, exploration="high", router_seed=0)
    return NLIRoutingModel(cfg, weight(), pad_id=0)


def args(tmp_path, **kw) -> TrainingArguments:
    return TrainingArguments(
        output_dir=str(tmp_path / "trainer"), num_train_epochs=2, per_device_train_batch_size=8, learning_rate=2e-3,
        lr_scheduler_type="constant", warmup_steps=0, max_grad_norm=0.0, weight_decay=0.0, optim="adamw_torch",
        report_to="none", save_strategy="no", logging_strategy="no", use_cpu=True, seed=0, **kw,
    )


class InOrder(RoutingTrainer):
    """The project loop's loader does not shuffle here; neither does this Trainer."""

    def _get_train_sampler(self, *a, **k):
        return SequentialSampler(self.train_dataset)


def test_a_plain_trainer_leaves_the_router_table_unchanged(tmp_path):
    model = make_model()
    table = model.routers()[0].table.detach().clone()
    rows = tiny_loader().dataset
    Trainer(model=model, args=args(tmp_path, remove_unused_columns=False), train_dataset=rows,
            data_collator=NLICollator(0, "signature")).train()
    assert torch.equal(model.routers()[0].table, table), "a plain Trainer is not expected to train routers"


def test_routing_trainer_trains_the_routers_like_the_projects_loop(tmp_path):
    rows = tiny_loader().dataset
    ours = make_model()
    table0 = ours.routers()[0].table.detach().clone()
    trainer = InOrder(model=ours, args=args(tmp_path), train_dataset=rows, data_collator=NLICollator(0, "signature"),
                      router_lr=1e-2)
    trainer.train()
    assert not torch.equal(ours.routers()[0].table, table0), "the router table did not change"
    assert trainer.last_router_loss is not None
    pred = trainer.predict(rows)  # evaluation stacks the logits only (trajectories are left out)
    assert pred.predictions.shape == (len(rows), 3) and pred.metrics["test_loss"] > 0

    loop = make_model()
    cfg = TrainConfig(epochs=2, batch_size=8, lr=2e-3, block_optimizer="adam", router_lr_ratio=5.0, seed=0,
                      select_best=False)
    train(loop, tiny_loader(), {}, cfg)
    torch.testing.assert_close(ours.routers()[0].table, loop.routers()[0].table, atol=1e-6, rtol=1e-5)
    for (name, a), b in zip(ours.named_parameters(), loop.parameters()):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5, msg=lambda m: f"{name}: {m}")


def test_routing_trainer_refuses_a_model_that_is_not_routed(tmp_path):
    with pytest.raises(TypeError, match="routed models"):
        RoutingTrainer(model=torch.nn.Linear(2, 2), args=args(tmp_path), train_dataset=[])


def pair_rows(n: int = 32, t: int = 7, num_meta: int = 3) -> list[dict]:
    g = torch.Generator().manual_seed(0)
    return [{"input_ids": torch.randint(1, 99, (t,), generator=g), "attention_mask": torch.ones(t, dtype=torch.long),
             "labels": int(torch.randint(0, 3, (1,), generator=g)), "meta": i % num_meta} for i in range(n)]


def stack(rows: list[dict]) -> dict:
    return {k: torch.stack([r[k] for r in rows]) if torch.is_tensor(rows[0][k]) else torch.tensor([r[k] for r in rows])
            for k in rows[0]}


def test_routing_trainer_trains_a_routed_transformer_and_an_injected_hf_model(tmp_path):
    from transformers import BertConfig, BertForSequenceClassification

    from nli_routing.models.transformer import (RoutedTransformerConfig, RoutedTransformerForNLI, TransformerNLIConfig,
                                                get_controller, inject_routing)

    from .helpers import tiny_bert

    torch.manual_seed(0)
    nli = RoutedTransformerForNLI(TransformerNLIConfig(route="attention", num_blocks=2, num_meta=3, classifier_hidden=8,
                                                       exploration="high"), backbone=tiny_bert())
    torch.manual_seed(0)
    bert = BertForSequenceClassification(BertConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                                    intermediate_size=37, vocab_size=99, num_labels=3))
    inject_routing(bert, RoutedTransformerConfig(route="attention", num_blocks=2, num_meta=3, exploration="high"))
    for model in (nli, bert):
        table = get_controller(model).router.table.detach().clone()
        RoutingTrainer(model=model, args=args(tmp_path), train_dataset=pair_rows(),
                       data_collator=stack, router_lr=0.05).train()
        assert not torch.equal(get_controller(model).router.table, table), f"{type(model).__name__}: routers did not learn"
    # the injected model saves with transformers' own save_pretrained (router state is tensors only)
    bert.save_pretrained(tmp_path / "bert")
    from safetensors.torch import load_file

    saved = load_file(str(tmp_path / "bert" / "model.safetensors"))
    assert torch.equal(saved["routing_controller.router.table"], get_controller(bert).router.table.detach())


def test_the_logs_give_the_task_loss_and_the_router_loss_apart(tmp_path):
    """Issue 31: ``loss`` in the training logs is the task loss (near the evaluation loss), the routing
    objective is ``router_loss``; their sum is the loss the Trainer minimised."""
    rows = tiny_loader().dataset
    model = make_model()
    a = args(tmp_path)
    a.logging_strategy, a.logging_steps = "steps", 3
    trainer = RoutingTrainer(model=model, args=a, train_dataset=rows, data_collator=NLICollator(0, "signature"),
                             router_lr=1e-2)
    seen = []
    original = Trainer.log

    def spy(self, logs, *x, **k):
        seen.append(dict(logs))
        return original(self, logs, *x, **k)

    Trainer.log = spy
    try:
        trainer.train()
    finally:
        Trainer.log = original
    steps = [r for r in seen if "router_loss" in r]
    assert steps, seen
    for r in steps:
        assert 0.5 < r["loss"] < 2.0, r  # cross-entropy of 3 classes, not task + router
    model.eval()
    batch = next(iter(tiny_loader()))
    with torch.no_grad():
        task = model(**batch).loss.item()
    assert abs(steps[-1]["loss"] - task) < 0.5
