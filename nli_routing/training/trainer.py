"""Routed models under ``transformers.Trainer``: :class:`RoutingTrainer` trains the routers too.

A plain ``Trainer`` only minimises the task loss: the routers' tables never change, because their
learning signal is the routing objective (rewards assigned to the trajectories), not the gradient of
the task loss. ``RoutingTrainer`` adds, per batch, the model's router loss
(:meth:`~nli_routing.models.base.RoutedModel.router_loss`: final and collaboration rewards, each
learner's loss, a learned dispatcher's loss) to the loss it backpropagates, and steps a separate
router optimizer (SGD at ``router_lr``, as the project's loop does) right after the Trainer's own
optimizer, which holds only the block parameters. The routers' exploration follows the epoch
(``set_epoch`` at every epoch start).

    trainer = RoutingTrainer(model=model, args=TrainingArguments(...), train_dataset=ds,
                             data_collator=NLICollator(pad_id, "signature"), router_lr=0.01)
    trainer.train()

The meta column must reach the collator: ``remove_unused_columns`` is switched off (the model's
forward takes ``meta``, the data set calls it ``signature`` or ``genre``).
"""

from __future__ import annotations

import logging
from typing import Any

import torch
from transformers import Trainer, TrainerCallback

from ..models.base import RoutedModel

__all__ = ["RoutingTrainer"]

logger = logging.getLogger(__name__)


class _RouterSteps(TrainerCallback):
    """Steps the router optimizer after every optimizer step; moves the exploration schedule per epoch."""

    def __init__(self, trainer: "RoutingTrainer") -> None:
        self.trainer = trainer

    def on_epoch_begin(self, args, state, control, **kwargs):
        self.trainer.routed_model.set_epoch(int(state.epoch or 0))

    def on_optimizer_step(self, args, state, control, **kwargs):
        if self.trainer.router_optimizer is not None:
            self.trainer.router_optimizer.step()


class RoutingTrainer(Trainer):
    """A ``Trainer`` whose routers learn (see the module docstring).

    ``router_lr``: the router optimizer's learning rate (default: ``router_lr_ratio`` x the block
    learning rate, ratio 5 as in the SCI recipes).
    """

    def __init__(self, *args: Any, router_lr: float | None = None, router_lr_ratio: float = 5.0, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if not isinstance(self.routed_model, RoutedModel):
            raise TypeError(f"RoutingTrainer trains routed models (RoutedModel), got {type(self.routed_model).__name__}")
        if router_lr is not None and router_lr <= 0:
            raise ValueError(f"router_lr must be > 0, got {router_lr}")
        self.router_lr = float(router_lr) if router_lr is not None else self.args.learning_rate * router_lr_ratio
        self.router_optimizer: torch.optim.Optimizer | None = None
        self.last_router_loss: torch.Tensor | None = None
        if self.args.remove_unused_columns:
            logger.info("RoutingTrainer: remove_unused_columns=False (the meta column must reach the collator)")
            self.args.remove_unused_columns = False
        self.add_callback(_RouterSteps(self))

    @property
    def routed_model(self) -> RoutedModel:
        return self.accelerator.unwrap_model(self.model) if hasattr(self, "accelerator") else self.model

    def create_optimizer(self, model: Any = None) -> torch.optim.Optimizer:
        """The Trainer's optimizer (its class and settings from the arguments) over the block
        parameters only, and the router optimizer (SGD at ``router_lr``) over the routers'."""
        if self.optimizer is None:
            routed = self.routed_model
            opt_cls, opt_kwargs = Trainer.get_optimizer_cls_and_kwargs(self.args, routed)
            blocks = routed.block_parameters()
            self.optimizer = opt_cls([{"params": blocks, "weight_decay": self.args.weight_decay}], **opt_kwargs)
            routers = [p for p in routed.router_parameters() if p.requires_grad]
            self.router_optimizer = torch.optim.SGD(routers, lr=self.router_lr) if routers else None
        return self.optimizer

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        """Task loss (mean cross-entropy) plus the routing objective's router loss of the batch."""
        outputs = model(**inputs)
        if outputs.loss is None:
            raise ValueError("RoutingTrainer needs labels in the batch (a 'labels' key from the collator)")
        loss = outputs.loss
        if model.training:
            router_loss = self.routed_model.router_loss(outputs, inputs["labels"])
            self.last_router_loss = router_loss.detach()
            loss = loss + router_loss
        return (loss, outputs) if return_outputs else loss
