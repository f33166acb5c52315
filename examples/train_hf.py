"""Fine-tune with the Hugging Face ``Trainer`` under spotshift: notices, encrypted checkpoints, moves.

A small GPT-2 built from a config (nothing is downloaded; point ``--model`` at a local directory
with ``config.json`` and weights to fine-tune a real one) trained on the bytes of the job's dataset
(``$SPOTSHIFT_DATASET_SOURCE``, set by ``spotshift run``). Needs the ``hf`` extra.

    spotshift jobs add gpt-ft --dataset corpus --total-steps 200 --work-hours 4 \\
        --checkpoint-every-steps 50 --command "python examples/train_hf.py"
    spotshift run gpt-ft --location aws/us-east-1

The only spotshift line is ``train(trainer)`` (instead of ``trainer.train()``): it resumes from the
job's newest checkpoint in the region's store, saves through the session at the Trainer's save
points and on the job's cadence, and stops cleanly after the emergency checkpoint of a notice.
"""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path
from urllib.parse import urlparse

import torch
from transformers import GPT2Config, GPT2LMHeadModel, Trainer, TrainingArguments

from spotshift.integrations.hf import train


class ByteBlocks(torch.utils.data.Dataset):
    """Fixed-length blocks of the dataset's bytes (token id = byte value)."""

    def __init__(self, source: str | None, block: int):
        if source:
            root = Path(urlparse(source).path if source.startswith("file://") else source)
            files = sorted(root.rglob("*.txt")) if root.is_dir() else [root]
            data = b"".join(p.read_bytes() for p in files)
        else:
            data = b"spot prices move; checkpoints keep the work. " * 100
        ids = torch.tensor(list(data), dtype=torch.long)
        n = len(ids) // block
        self.blocks = ids[: n * block].reshape(n, block)

    def __len__(self) -> int:
        return len(self.blocks)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"input_ids": self.blocks[i], "labels": self.blocks[i]}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--steps", type=int, default=int(os.environ.get("SPOTSHIFT_TOTAL_STEPS", "100")))
    p.add_argument(
        "--model", help="local directory of a pretrained model (default: a tiny GPT-2 from a config)"
    )
    p.add_argument("--lr", type=float, default=5e-4)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--block", type=int, default=64)
    args = p.parse_args()

    torch.use_deterministic_algorithms(True)
    torch.set_num_threads(1)
    torch.manual_seed(0)
    if args.model:
        model = GPT2LMHeadModel.from_pretrained(args.model, local_files_only=True)
    else:
        model = GPT2LMHeadModel(
            GPT2Config(
                vocab_size=256,
                n_positions=args.block,
                n_embd=64,
                n_layer=2,
                n_head=2,
                bos_token_id=0,
                eos_token_id=0,
            )
        )
    targs = TrainingArguments(
        output_dir=os.environ.get("SPOTSHIFT_WORKDIR") or tempfile.mkdtemp(),
        max_steps=args.steps,
        per_device_train_batch_size=args.batch_size,
        learning_rate=args.lr,
        warmup_steps=max(1, args.steps // 10),
        logging_steps=1,
        save_strategy="no",  # spotshift saves on the job's cadence and on notices
        report_to=[],
        seed=0,
        use_cpu=not torch.cuda.is_available(),
        disable_tqdm=True,
    )
    trainer = Trainer(
        model=model,
        args=targs,
        train_dataset=ByteBlocks(os.environ.get("SPOTSHIFT_DATASET_SOURCE"), args.block),
    )
    out = train(trainer)
    print(f"trained to step {out.global_step}", flush=True)


if __name__ == "__main__":
    main()
