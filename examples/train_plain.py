"""A plain PyTorch training loop that spotshift can preempt, resume and move.

A small character-level language model (embedding, GRU, dropout, linear head) trained with AdamW
and a warm-up/cosine schedule on the text files of the job's dataset (``$SPOTSHIFT_DATASET_SOURCE``,
set by ``spotshift run``; a built-in text otherwise). Batches are drawn from torch's global RNG, so
a resumed run is bitwise equal to one that never stopped only because the Session restores it.

    spotshift jobs add chars --dataset corpus --total-steps 300 --work-hours 2 \\
        --checkpoint-every-steps 50 --command "python examples/train_plain.py"
    spotshift run chars --location gcp/us-central1

Everything spotshift-specific is the five lines around ``Session``.
"""

from __future__ import annotations

import argparse
import math
import os
import random
import time
from pathlib import Path
from urllib.parse import urlparse

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F  # noqa: N812

from spotshift.checkpointing import Session

FALLBACK_TEXT = "spot prices move; checkpoints keep the work. " * 200


def load_text(source: str | None) -> bytes:
    """The bytes of every ``*.txt`` file under the dataset source (``file://`` URL or path), sorted."""
    if not source:
        return FALLBACK_TEXT.encode()
    root = Path(urlparse(source).path if source.startswith("file://") else source)
    files = sorted(root.rglob("*.txt")) if root.is_dir() else [root]
    data = b"".join(p.read_bytes() for p in files)
    return data or FALLBACK_TEXT.encode()


class CharModel(nn.Module):
    def __init__(self, vocab: int = 256, dim: int = 64):
        super().__init__()
        self.embed = nn.Embedding(vocab, dim)
        self.rnn = nn.GRU(dim, dim, batch_first=True)
        self.drop = nn.Dropout(0.1)
        self.head = nn.Linear(dim, vocab)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, _ = self.rnn(self.embed(x))
        return self.head(self.drop(h))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--steps", type=int, default=int(os.environ.get("SPOTSHIFT_TOTAL_STEPS", "200")))
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--seq-len", type=int, default=32)
    p.add_argument("--step-seconds", type=float, default=0.0, help="pace steps (a stand-in for a GPU step)")
    args = p.parse_args()

    torch.use_deterministic_algorithms(True)
    torch.set_num_threads(1)
    torch.manual_seed(0)
    random.seed(0)
    np.random.seed(0)
    data = torch.tensor(list(load_text(os.environ.get("SPOTSHIFT_DATASET_SOURCE"))), dtype=torch.long)
    model = CharModel()
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.01)
    warmup = max(1, args.steps // 10)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt,
        lambda s: min(1.0, (s + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * min(1.0, s / args.steps))),
    )

    with Session.from_env() as s:
        s.register(model=model, optimizer=opt, scheduler=sched)
        start = s.restore()
        for step in range(start, args.steps):
            t0 = time.monotonic()
            idx = torch.randint(0, len(data) - args.seq_len - 1, (args.batch_size,))
            x = torch.stack([data[i : i + args.seq_len] for i in idx])
            y = torch.stack([data[i + 1 : i + args.seq_len + 1] for i in idx])
            logits = model(x)
            loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            grad_norm = nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            sched.step()
            if args.step_seconds > 0:
                time.sleep(max(0.0, args.step_seconds - (time.monotonic() - t0)))
            s.step_done(step + 1, tokens=x.numel(), loss=float(loss), grad_norm=float(grad_norm))
            if s.should_stop:  # a notice: the emergency checkpoint is committed in the region store
                print(f"stopping at step {step + 1}: checkpoint committed", flush=True)
                break
        else:
            print(
                f"done: {args.steps} steps, loss {float(loss):.4f}" if args.steps > start else "done",
                flush=True,
            )


if __name__ == "__main__":
    main()
