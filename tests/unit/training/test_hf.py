"""``spotshift.integrations.hf``: a Hugging Face ``Trainer`` (tiny GPT-2 built from a config, nothing
downloaded) checkpoints through the session at its save points and on a notice, and resumes from the
session's checkpoint to the same content hash as a run that was never interrupted.

The three runs happen in a fresh process, as they would for a user: a bitwise comparison must not
depend on what earlier tests left in a pytest worker (torch's thread settings or global RNGs differ
there; CI once saw the uninterrupted run end in a state no clean process produces).
"""

from __future__ import annotations

import json
import multiprocessing
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


def identity_of_last(tmp: Path, name: str) -> dict[str, str]:
    """What the last checkpoint's content hash covers, piece by piece (names the piece that differs)."""
    st = open_store((tmp / name).as_uri())
    ck = StoredCheckpoint(st, "hf", list_checkpoints(st, "hf")[-1])
    out = {f"part {p}": str(m.get("plain_hash")) for p, m in ck.meta["parts"].items()}
    out.update(
        {f"state {k}": json.dumps(v, sort_keys=True, default=str) for k, v in ck.meta["state"].items()}
    )
    return out


def three_runs(tmp: Path) -> None:
    """Uninterrupted, cut by SIGTERM after step 6, resumed; what the test asserts goes to result.json."""
    torch.use_deterministic_algorithms(True)
    res: dict[str, Any] = {"threads": torch.get_num_threads()}
    with session(tmp, "ref") as s:
        res["ref_steps"] = train(trainer(tmp / "a", []), s).global_step
    res["ref"] = checkpoints(tmp, "ref")
    res["ref_hf_dirs"] = sorted(p.name for p in (tmp / "a" / "out").glob("checkpoint-*"))
    with session(tmp, "cut") as s:
        train(trainer(tmp / "b", [Sigterm(6)]), s)
        res["cut_stop"] = [s.should_stop, s.step]
    res["cut"] = checkpoints(tmp, "cut")
    with session(tmp, "cut") as s:
        res["resumed_steps"] = train(trainer(tmp / "c", []), s).global_step
        res["resumed_from"] = s.result["resumed_from"]["step"]
    res["resumed"] = checkpoints(tmp, "cut")
    res["identity"] = {"ref": identity_of_last(tmp, "ref"), "resumed": identity_of_last(tmp, "cut")}
    (tmp / "result.json").write_text(json.dumps(res))


def test_trainer_saves_through_the_session_and_resumes_bitwise(spotshift_home: Path, tmp_path: Path) -> None:
    proc = multiprocessing.get_context("spawn").Process(target=three_runs, args=(tmp_path,))
    proc.start()
    proc.join(timeout=600)
    assert proc.exitcode == 0, f"the runs' process ended with {proc.exitcode} (its traceback is above)"
    res = json.loads((tmp_path / "result.json").read_text())

    assert res["ref_steps"] == STEPS
    assert [(step, kind) for step, kind, _ in res["ref"]] == [(4, "periodic"), (8, "periodic"), (10, "final")]
    assert res["ref_hf_dirs"] == [], "the Trainer wrote its own checkpoint-N directories"
    assert res["cut_stop"] == [True, 6]
    assert [(step, kind) for step, kind, _ in res["cut"]] == [(4, "periodic"), (6, "emergency")]
    assert res["resumed_from"] == 6 and res["resumed_steps"] == STEPS
    final = res["resumed"][-1]
    assert final[:2] == [STEPS, "final"]
    ref, resumed = res["identity"]["ref"], res["identity"]["resumed"]
    differ = sorted(k for k in ref.keys() | resumed.keys() if ref.get(k) != resumed.get(k))
    assert final[2] == res["ref"][-1][2] and not differ, (
        f"the resumed Trainer did not end in the same state ({res['threads']} torch threads): {differ} differ"
    )
