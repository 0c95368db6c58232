"""What a learned dispatcher's agent reads during training on SCI joint (issue 29).

Trains one recipe method (``--method``, e.g. ``wp-rbae-seq``) with the recipe's defaults for
``--steps`` training batches and records, every ``--every`` batches: how the batch was dispatched
(counts per class), the spread across samples of the agent's input (std over the batch of the
projection ``z``, mean over features) and of its action values, the batch's mutual information
``H(mean pi) - mean H(pi)`` (nats), the reconstruction loss (RBAE) and, with ``--dispatch_state_norm``,
how the running statistics compare with the batch's (what evaluation reads). Writes ``--out`` (JSON).

    HF_HUB_OFFLINE=1 OMP_NUM_THREADS=1 python -m benchmarks.dispatch_inputs --method wp-rbae-seq --steps 300 \\
        [--dispatch_state_norm] --out benchmarks/results/sci_issue29_norm/inputs_seq.json
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from nli_routing.experiments.bench import commit, machine
from nli_routing.experiments.nli import RECIPE_TRAIN_DEFAULTS, DataArgs, DispatchArgs, prepare_sci, run_method
from nli_routing.models import dispatcher as D
from nli_routing.models.nli import NLIModelConfig
from nli_routing.training.loop import TrainConfig


class Enough(Exception):
    """Raised after ``--steps`` batches to end the run."""


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--method", default="wp-rbae-seq")
    ap.add_argument("--data_dir", default="../shared/data/sci/joint")
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--every", type=int, default=30)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--dispatch_state_norm", action="store_const", const=True, default=None,
                    help="standardise the agent's input (default: the recipes' default, on for the online dispatchers "
                         "since 1b68217; runs recorded before it without this flag had it off)")
    ap.add_argument("--no_dispatch_state_norm", dest="dispatch_state_norm", action="store_const", const=False)
    ap.add_argument("--dispatch_recon_reward", default="raw")
    ap.add_argument("--agent_grad_to_encoder", action="store_true",
                    help="let the agent's loss reach the encoder (detach_state=False; the RBAE default keeps it out)")
    ap.add_argument("--out", default="benchmarks/results/dispatch_inputs.json")
    args = ap.parse_args(argv)
    if args.steps < 1 or args.every < 1:
        ap.error(f"--steps and --every must be >= 1, got {args.steps} and {args.every}")
    if not Path(args.data_dir).is_dir():
        ap.error(f"--data_dir {args.data_dir}: not a folder (the SCI corpus, ../shared/data/sci/joint)")
    torch.set_num_threads(1)
    records, seen, calls = [], {}, [0]
    original = D.LearnedDispatcher.loss

    def loss(self, out, task_reward):
        calls[0] += 1
        if calls[0] == 1:
            self.project.register_forward_hook(lambda m, i, o: seen.update(z=o.detach()))
        if "z" in seen and (calls[0] % args.every == 2 or args.every == 1):
            v = out.trajectory.values[:, 0].float()
            row = {"step": calls[0], "counts": torch.bincount(out.meta, minlength=self.num_dispatch).tolist(),
                   "z_std_across_batch": float(seen["z"].std(0).mean()), "z_abs": float(seen["z"].abs().mean()),
                   "values_std_across_batch": float(v.std(0).mean()),
                   "mutual_information_nats": float(self.mutual_information(out)),
                   "task_reward": float(task_reward.mean())}
            if out.recon_loss is not None:
                row["recon_loss"] = float(out.recon_loss.detach().mean())
            if self.state_norm is not None:
                n, z = self.state_norm, seen["z"]
                ev = F.batch_norm(z, n.running_mean, n.running_var, training=False, eps=n.eps)
                row["eval_input_std_across_batch"] = float(ev.std(0).mean())
                row["batch_var"] = float(z.var(0).mean())
                row["running_var"] = float(n.running_var.mean())
            records.append(row)
            print(json.dumps(row), flush=True)
        if calls[0] >= args.steps:
            raise Enough
        return original(self, out, task_reward)

    D.LearnedDispatcher.loss = loss

    prepared = prepare_sci(DataArgs(data_dir=args.data_dir, allow_unseen_meta=True))
    cfg = TrainConfig(epochs=100, seed=args.seed, cpu=True, progress=False, **RECIPE_TRAIN_DEFAULTS)
    started = time.time()
    try:
        run_method(args.method, prepared, NLIModelConfig(), cfg, dispatch_args=DispatchArgs(
            dispatch_state_norm=args.dispatch_state_norm, dispatch_recon_reward=args.dispatch_recon_reward,
            dispatch_agent_to_encoder=True if args.agent_grad_to_encoder else None))
    except Enough:
        pass
    finally:
        D.LearnedDispatcher.loss = original
    res = {"commit": commit(), "machine": machine(), "args": vars(args), "seconds": time.time() - started,
           "records": records}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(res, indent=1))
    return res


if __name__ == "__main__":
    main()
