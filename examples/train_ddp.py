"""A DDP training loop on several processes (``torchrun``) that spotshift can preempt, resume and move.

A small character-level model (embedding, MLP, linear head) trained with AdamW by every rank of a
``torchrun`` job on CPU (gloo; NCCL works the same on GPUs), each rank drawing its own batches
from its own seeded RNG. The Session writes one sharded checkpoint per save through
``torch.distributed.checkpoint`` (every rank's shard encrypted and in place before rank 0 writes
``COMMIT``), stops every rank at the same step when a notice reaches any of them, and restores
each rank's RNG on resume, so a resumed run is bitwise equal to one that never stopped.

    spotshift jobs add ddp --dataset corpus --total-steps 300 --work-hours 2 \\
        --checkpoint-every-steps 50 --command "torchrun --nproc-per-node 2 examples/train_ddp.py"
    spotshift run ddp --location gcp/us-central1

or, for a job declared without ``--command``::

    spotshift run ddp --location gcp/us-central1 -- torchrun --nproc-per-node 2 examples/train_ddp.py

Everything spotshift-specific is the five lines around ``Session``; the rest is ordinary DDP.
"""

from __future__ import annotations

import argparse
import os
import random
import time

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.nn import functional as F  # noqa: N812
from torch.nn.parallel import DistributedDataParallel
from train_plain import load_text  # the corpus reader of the single-process example (same directory)

from spotshift.checkpointing import Session


class CharMLP(nn.Module):
    def __init__(self, vocab: int = 256, dim: int = 32, context: int = 8):
        super().__init__()
        self.embed = nn.Embedding(vocab, dim)
        self.mlp = nn.Sequential(nn.Linear(dim * context, 4 * dim), nn.GELU(), nn.Dropout(0.1))
        self.head = nn.Linear(4 * dim, vocab)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.mlp(self.embed(x).flatten(1)))


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
    torch.manual_seed(0)  # the same initial weights on every rank
    data = torch.tensor(list(load_text(os.environ.get("SPOTSHIFT_DATASET_SOURCE"))), dtype=torch.long)
    model = DistributedDataParallel(CharMLP(context=args.context))
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.01)
    torch.manual_seed(1000 + rank)  # each rank its own batches (the Session keeps each rank's RNG)
    random.seed(rank)  # every RNG the checkpoint records is seeded: the same run, the same content hash
    np.random.seed(rank)

    with Session.from_env() as s:  # joins the process group: every rank is part of the session
        s.register(model=model, optimizer=opt)
        start = s.restore()
        for step in range(start, args.steps):
            t0 = time.monotonic()
            idx = torch.randint(0, len(data) - args.context - 1, (args.batch_size,))
            x = torch.stack([data[i : i + args.context] for i in idx])
            y = data[idx + args.context]
            loss = F.cross_entropy(model(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()  # DDP all-reduces the gradients
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
