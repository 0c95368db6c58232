"""Routed models under ``transformers.Trainer``: :class:`RoutingTrainer` trains the routers too.

A plain ``Trainer`` only minimises the task loss: the routers' tables never change, because their
learning signal is the routing objective (rewards assigned to the trajectories), not the gradient of
the task loss. ``RoutingTrainer`` adds, per batch, the model's router loss
(:meth:`~nli_routing.models.base.RoutedModel.router_loss`: final and collaboration rewards, each
learner's loss, a learned dispatcher's loss) to the loss it backpropagates, and steps a separate
router optimizer (SGD at ``router_lr``, as the project's loop does) right after the Trainer's own
optimizer, which holds only the block parameters. The routers' exploration follows the epoch
(``set_epoch`` at every epoch start). The training logs give the task loss (``loss``) and the router
loss (``router_loss``) apart.

    trainer = RoutingTrainer(model=model, args=TrainingArguments(...), train_dataset=ds,
                             data_collator=NLICollator(pad_id, "signature"), router_lr=0.01)
    trainer.train()

The meta column must reach the collator: ``remove_unused_columns`` is switched off (the model's
forward takes ``meta``, the data set calls it ``signature`` or ``genre``).

Any Hugging Face model with routing injected by :func:`~nli_routing.models.transformer.inject_routing`
(e.g. a ``BertForSequenceClassification``) trains the same way: its router is rewarded +1/-1 for
each sample's correct/incorrect prediction (the batch needs ``labels`` and ``meta``).
"""

from __future__ import annotations

import logging
from typing import Any

import torch
from transformers import Trainer, TrainerCallback

from ..models.base import RoutedModel
from ..models.transformer.layer import RoutingController, get_controller
from ..routing import assign_rewards, final_reward
from ..routing.native import enable_native_cpu_kernels
from .allocator import keep_freed_cpu_memory

__all__ = ["RoutingTrainer"]

logger = logging.getLogger(__name__)


class _RouterSteps(TrainerCallback):
    """Steps the router optimizer after every optimizer step; moves the exploration schedule per epoch."""

    def __init__(self, trainer: "RoutingTrainer") -> None:
        self.trainer = trainer

    def on_epoch_begin(self, args, state, control, **kwargs):
        self.trainer.routing.set_epoch(int(state.epoch or 0))

    def on_optimizer_step(self, args, state, control, **kwargs):
        if self.trainer.router_optimizer is not None:
            self.trainer.router_optimizer.step()


class InjectedRouting:
    """The routing objective of a plain Hugging Face model with injected routing (one controller)."""

    def __init__(self, model: torch.nn.Module) -> None:
        self.model = model
        self.controller: RoutingController = get_controller(model)

    def router_parameters(self) -> list[torch.nn.Parameter]:
        return list(self.controller.router.parameters())

    def block_parameters(self) -> list[torch.nn.Parameter]:
        ids = {id(p) for p in self.router_parameters()}
        return [p for p in self.model.parameters() if p.requires_grad and id(p) not in ids]

    def set_epoch(self, epoch: int) -> None:
        self.controller.router.set_epoch(epoch)

    def router_loss(self, outputs: Any, labels: torch.Tensor) -> torch.Tensor:
        traj = self.controller.last_trajectory
        if traj is None:
            raise ValueError("the injected routing made no decision in this forward pass (pass meta=... in the batch)")
        correct = outputs.logits.detach().argmax(-1) == labels
        assign_rewards(traj, final_reward("correct", correct=correct))
        return self.controller.router.loss(traj)


class RoutingTrainer(Trainer):
    """A ``Trainer`` whose routers learn (see the module docstring).

    ``router_lr``: the router optimizer's learning rate (default: ``router_lr_ratio`` x the block
    learning rate, ratio 5 as in the SCI recipes). ``keep_cpu_memory`` and ``native_cpu_kernels``: as the
    library loop's :class:`~nli_routing.training.loop.TrainConfig` fields of those names (CPU only).
    """

    def __init__(self, *args: Any, router_lr: float | None = None, router_lr_ratio: float = 5.0,
                 keep_cpu_memory: bool = False, native_cpu_kernels: bool = False, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if keep_cpu_memory and self.args.device.type == "cpu":  # opt-in, as in the library's loop (TrainConfig.keep_cpu_memory)
            keep_freed_cpu_memory()
        if native_cpu_kernels and self.args.device.type == "cpu":  # opt-in (TrainConfig.native_cpu_kernels)
            enable_native_cpu_kernels()
        model = self.routed_model
        if isinstance(model, RoutedModel):
            self.routing: RoutedModel | InjectedRouting = model
        else:
            try:
                self.routing = InjectedRouting(model)
            except ValueError:
                raise TypeError(f"RoutingTrainer trains routed models (a RoutedModel or a model with inject_routing), "
                                f"got {type(model).__name__}") from None
        if router_lr is not None and router_lr <= 0:
            raise ValueError(f"router_lr must be > 0, got {router_lr}")
        self.router_lr = float(router_lr) if router_lr is not None else self.args.learning_rate * router_lr_ratio
        self.router_optimizer: torch.optim.Optimizer | None = None
        self.last_router_loss: torch.Tensor | None = None
        self._router_loss_sum, self._router_loss_calls = 0.0, 0  # since the last log
        self._router_loss_total, self._router_loss_total_calls = 0.0, 0  # over the run (for train_loss)
        if self.args.remove_unused_columns:
            logger.info("RoutingTrainer: remove_unused_columns=False (the meta column must reach the collator)")
            self.args.remove_unused_columns = False
        self.add_callback(_RouterSteps(self))

    @property
    def routed_model(self) -> RoutedModel:
        return self.accelerator.unwrap_model(self.model)

    def create_optimizer(self, model: Any = None) -> torch.optim.Optimizer:
        """The Trainer's optimizer (its class and settings from the arguments) over the block
        parameters only, and the router optimizer (SGD at ``router_lr``) over the routers'."""
        if self.optimizer is None:
            opt_cls, opt_kwargs = Trainer.get_optimizer_cls_and_kwargs(self.args, self.routed_model)
            blocks = self.routing.block_parameters()
            self.optimizer = opt_cls([{"params": blocks, "weight_decay": self.args.weight_decay}], **opt_kwargs)
            routers = [p for p in self.routing.router_parameters() if p.requires_grad]
            self.router_optimizer = torch.optim.SGD(routers, lr=self.router_lr) if routers else None
        return self.optimizer

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        """Task loss (mean cross-entropy) plus the routing objective's router loss of the batch."""
        outputs = model(**inputs)
        if outputs.loss is None:
            raise ValueError("RoutingTrainer needs labels in the batch (a 'labels' key from the collator)")
        loss = outputs.loss
        if model.training:
            router_loss = self.routing.router_loss(outputs, inputs["labels"])
            self.last_router_loss = router_loss.detach()
            self._router_loss_sum += float(self.last_router_loss)
            self._router_loss_calls += 1
            self._router_loss_total += float(self.last_router_loss)
            self._router_loss_total_calls += 1
            loss = loss + router_loss
        return (loss, outputs) if return_outputs else loss

    def log(self, logs: dict[str, float], *args: Any, **kwargs: Any) -> None:
        """Training logs report the task loss as ``loss`` and the routing objective apart, as
        ``router_loss`` (the mean over the batches since the last log); the sum is what was minimised."""
        if "loss" in logs and self._router_loss_calls:
            router = self._router_loss_sum / self._router_loss_calls
            logs = {**logs, "loss": logs["loss"] - router, "router_loss": router}
            self._router_loss_sum, self._router_loss_calls = 0.0, 0
        if "train_loss" in logs and self._router_loss_total_calls:  # the summary at the end of train()
            router = self._router_loss_total / self._router_loss_total_calls
            logs = {**logs, "train_loss": logs["train_loss"] - router, "train_router_loss": router}
        super().log(logs, *args, **kwargs)
