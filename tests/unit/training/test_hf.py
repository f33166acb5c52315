"""``spotshift.integrations.hf``: a Hugging Face ``Trainer`` (tiny GPT-2 built from a config, nothing
downloaded) checkpoints through the session at its save points and on a notice, and resumes from the
session's checkpoint to the same content hash as a run that was never interrupted."""

from __future__ import annotations

import os
import signal
from pathlib import Path
from typing import Any

import pytest

transformers = pytest.importorskip("transformers", reason="needs the hf extra")

import torch  # noqa: E402
from transformers import GPT2Config, GPT2LMHeadModel, Trainer, TrainerCallback, TrainingArguments  # noqa: E402

from spotshift.checkpoint.format import StoredCheckpoint, list_checkpoints  # noqa: E402
from spotshift.checkpointing import Session  # noqa: E402
from spotshift.integrations.hf import train  # noqa: E402
from spotshift.sync.store_url import open_store  # noqa: E402

STEPS = 10


class Tokens(torch.utils.data.Dataset):
    def __init__(self, n: int = 64, seq: int = 16):
        g = torch.Generator().manual_seed(5)
        self.x = torch.randint(0, 64, (n, seq), generator=g)

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"input_ids": self.x[i], "labels": self.x[i]}


class Sigterm(TrainerCallback):
    """What the cloud does: SIGTERM the process after optimizer step ``at``."""

    def __init__(self, at: int):
        self.at = at

    def on_step_end(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
        if state.global_step == self.at:
            os.kill(os.getpid(), signal.SIGTERM)


def trainer(tmp: Path, callbacks: list[Any]) -> Trainer:
    torch.manual_seed(0)
    cfg = GPT2Config(
        vocab_size=64, n_positions=16, n_embd=32, n_layer=1, n_head=2, bos_token_id=0, eos_token_id=0
    )
    args = TrainingArguments(
        output_dir=str(tmp / "out"),
        max_steps=STEPS,
        per_device_train_batch_size=4,
        learning_rate=1e-3,
        logging_steps=1,
        save_strategy="steps",
        save_steps=4,
        report_to=[],
        seed=0,
        use_cpu=True,
        disable_tqdm=True,
        dataloader_num_workers=0,
    )
    return Trainer(model=GPT2LMHeadModel(cfg), args=args, train_dataset=Tokens(), callbacks=callbacks)


def session(tmp: Path, name: str) -> Session:
    return Session(
        "hf",
        "gcp/us-central1",
        store_url=(tmp / name).as_uri(),
        workdir=tmp / f"w-{name}",
        checkpoint_every_steps=1000,
        watchers={},
    )


def checkpoints(tmp: Path, name: str) -> list[tuple[int, str, str]]:
    st = open_store((tmp / name).as_uri())
    out = []
    for c in list_checkpoints(st, "hf"):
        ck = StoredCheckpoint(st, "hf", c)
        out.append((ck.step, ck.meta["kind"], ck.content_hash))
    return out


def test_trainer_saves_through_the_session_and_resumes_bitwise(spotshift_home: Path, tmp_path: Path) -> None:
    torch.use_deterministic_algorithms(True)
    with session(tmp_path, "ref") as s:
        out = train(trainer(tmp_path / "a", []), s)
    assert out.global_step == STEPS
    ref = checkpoints(tmp_path, "ref")
    assert [(step, kind) for step, kind, _ in ref] == [(4, "periodic"), (8, "periodic"), (10, "final")]
    assert not (tmp_path / "a" / "out").exists() or not any((tmp_path / "a" / "out").glob("checkpoint-*"))

    with session(tmp_path, "cut") as s:
        train(trainer(tmp_path / "b", [Sigterm(6)]), s)
        assert s.should_stop and s.step == 6
    assert [(step, kind) for step, kind, _ in checkpoints(tmp_path, "cut")] == [
        (4, "periodic"),
        (6, "emergency"),
    ]

    with session(tmp_path, "cut") as s:
        out = train(trainer(tmp_path / "c", []), s)
        assert s.result["resumed_from"]["step"] == 6
    assert out.global_step == STEPS
    final = checkpoints(tmp_path, "cut")[-1]
    assert final[:2] == (STEPS, "final")
    assert final[2] == ref[-1][2], "the resumed Trainer did not end in the same state"
