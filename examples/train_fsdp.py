"""An FSDP training loop on several processes (``torchrun``) that spotshift can preempt, resume and move.

The character-level model of ``train_ddp.py``, sharded with FSDP2 (``fully_shard`` on each block
and on the root: every rank holds half of each parameter and of its AdamW moments, as DTensors)
on CPU with gloo (NCCL works the same on GPUs). The Session saves what
``get_model_state_dict``/``get_optimizer_state_dict`` return, each rank its own shards, through
``torch.distributed.checkpoint`` into one encrypted checkpoint (every rank's shard in place before
rank 0 writes ``COMMIT``); a notice that reaches any rank stops every rank at the same step after
the emergency checkpoint committed, and a resume on the same world size is bitwise equal to a run
that never stopped.

    spotshift jobs add fsdp --dataset corpus --total-steps 300 --work-hours 2 --checkpoint-every-steps 50
    spotshift run fsdp --location gcp/us-central1 -- torchrun --nproc-per-node 2 examples/train_fsdp.py

Everything spotshift-specific is the five lines around ``Session``; the rest is ordinary FSDP.
"""

from __future__ import annotations

import argparse
import os
import random
import time

import numpy as np
import torch
import torch.distributed as dist
from torch.distributed.fsdp import fully_shard
from torch.nn import functional as F  # noqa: N812
from train_ddp import CharMLP  # the model of the DDP example (same directory)
from train_plain import load_text  # the corpus reader of the single-process example

from spotshift.checkpointing import Session


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--steps", type=int, default=int(os.environ.get("SPOTSHIFT_TOTAL_STEPS", "200")))
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--context", type=int, default=8)
    p.add_argument("--step-seconds", type=float, default=0.0, help="pace steps (a stand-in for a GPU step)")
    args = p.parse_args()

    dist.init_process_group("gloo")  # torchrun's RANK / WORLD_SIZE / MASTER_ADDR
    rank = dist.get_rank()
    torch.use_deterministic_algorithms(True)
    torch.set_num_threads(1)
    torch.manual_seed(0)  # the same initial weights on every rank, before sharding
    data = torch.tensor(list(load_text(os.environ.get("SPOTSHIFT_DATASET_SOURCE"))), dtype=torch.long)
    model = CharMLP(context=args.context)
    for block in (model.embed, model.mlp, model.head):
        fully_shard(block)  # each block's parameters sharded over the ranks (dim 0)
    fully_shard(model)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.01)  # sharded moments
    torch.manual_seed(1000 + rank)  # each rank its own batches (the Session keeps each rank's RNG)
    random.seed(rank)  # every RNG the checkpoint records is seeded: the same run, the same content hash
    np.random.seed(rank)

    with Session.from_env() as s:  # joins the process group: every rank is part of the session
        s.register(model=model, optimizer=opt)  # sharded state dicts, saved and loaded through DCP
        start = s.restore()
        for step in range(start, args.steps):
            t0 = time.monotonic()
            idx = torch.randint(0, len(data) - args.context - 1, (args.batch_size,))
            x = torch.stack([data[i : i + args.context] for i in idx])
            y = data[idx + args.context]
            loss = F.cross_entropy(model(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()  # FSDP reduce-scatters the gradients: each rank steps its own shards
            opt.step()
            if args.step_seconds > 0:
                time.sleep(max(0.0, args.step_seconds - (time.monotonic() - t0)))
            s.step_done(step + 1, tokens=x.numel() * dist.get_world_size(), loss=loss.item())
            if s.should_stop:  # a notice reached some rank: every rank's shard is committed
                print(f"rank {rank}: stopping at step {step + 1}: checkpoint committed", flush=True)
                break
        else:
            print(f"rank {rank}: done, {args.steps} steps", flush=True)
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
