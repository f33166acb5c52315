"""Restore the job's newest FSDP checkpoint on however many ranks ``torchrun`` started (the model of
examples/train_fsdp.py, sharded the same way, other initial weights) and have rank 0 ``torch.save``
the full model and AdamW moments it holds then into ``$FSDP_TEST_OUT``."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import torch
import torch.distributed as dist
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_optimizer_state_dict,
)
from torch.distributed.fsdp import fully_shard

from spotshift.checkpointing import Session

sys.path.insert(0, str(Path(__file__).resolve().parents[3] / "examples"))
from train_ddp import CharMLP  # noqa: E402 - the examples directory is not a package

dist.init_process_group("gloo")
torch.manual_seed(123)  # not the weights of the run that wrote the checkpoint
model = CharMLP()
for block in (model.embed, model.mlp, model.head):
    fully_shard(block)
fully_shard(model)
opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.01)
with Session.from_env() as s:
    s.register(model=model, optimizer=opt)
    step = s.restore()  # no step_done: closing writes no checkpoint
full = StateDictOptions(full_state_dict=True, cpu_offload=True)
rows = model.embed.weight.to_local().shape[0]
weights = get_model_state_dict(model, options=full)  # collective: gathered on rank 0 (empty elsewhere)
moments = get_optimizer_state_dict(model, opt, options=full)
if dist.get_rank() == 0:
    state = {"step": step, "rows": rows, "model": weights, "optimizer": moments["state"]}
    torch.save(state, os.environ["FSDP_TEST_OUT"])
dist.destroy_process_group()
