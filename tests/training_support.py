"""Helpers shared by the training/checkpoint unit tests and the Dagster tests: a tiny corpus, a tiny job."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

#: small enough that a step takes ~2 ms on one CPU thread
TINY_MODEL: dict[str, int] = {"vocab_size": 256, "d_model": 32, "n_layer": 2, "n_head": 2, "seq_len": 32}

_WORDS = [
    "spot",
    "gpu",
    "price",
    "region",
    "train",
    "checkpoint",
    "delta",
    "shift",
    "cloud",
    "the",
    "a",
    "of",
    "moves",
    "cheap",
    "preempt",
    "resume",
]


def make_corpus(root: Path, *, words: int = 6000, files: int = 2, seed: int = 1) -> Path:
    """A directory of small text files (a registered dataset's ``source``)."""
    rng = random.Random(seed)
    root.mkdir(parents=True, exist_ok=True)
    for i in range(files):
        (root / f"part-{i}.txt").write_text(" ".join(rng.choice(_WORDS) for _ in range(words)))
    return root


def declare_tiny_job(
    home: Path,
    name: str = "tiny",
    *,
    total_steps: int = 120,
    every: int = 40,
    start_location: str = "gcp/us-central1",
    **extra: Any,
) -> Any:
    """Register a corpus dataset (under ``home``) and a tiny job training on it; returns the job."""
    from spotshift import registry
    from spotshift.jobs import TrainingJob, add_job

    corpus = make_corpus(home.parent / f"corpus-{name}")
    registry.upsert("datasets", {"name": f"corpus-{name}", "source": corpus.as_uri()}, replace=True)
    job = TrainingJob(
        name=name,
        dataset=f"corpus-{name}",
        total_steps=total_steps,
        work_hours=10.0,
        model=dict(TINY_MODEL),
        batch_size=4,
        learning_rate=1e-3,
        checkpoint_every_steps=every,
        start_location=start_location,
        **extra,
    )
    add_job(job, replace=True)
    return job


def tiny_config(job: str = "tiny", dataset: str = "corpus-tiny", **over: Any) -> Any:
    """A :class:`TrainConfig` for in-process trainers."""
    from spotshift.training.trainer import TrainConfig

    base = {
        "job": job,
        "dataset": dataset,
        "model": dict(TINY_MODEL),
        "total_steps": 60,
        "batch_size": 4,
        "learning_rate": 1e-3,
        "seed": 3,
    }
    base.update(over)
    return TrainConfig.from_dict(base)


def weights_of(store_url: str, job: str, checkpoint_id: str | None = None) -> dict[str, Any]:
    """The model tensors of a committed checkpoint (fully verified)."""
    from spotshift.checkpoint.format import open_checkpoint
    from spotshift.checkpoint.keys import open_key_provider
    from spotshift.sync.store_url import open_store

    ck = open_checkpoint(open_store(store_url), job, checkpoint_id)
    return ck.load_tensors(open_key_provider())["model"]


def forge_checkpoint(store: Any, job: str, checkpoint_id: str, *, learning_rate: float = 0.5) -> None:
    """What someone with write access to a store but without the key can do to a checkpoint: edit its
    metadata (the learning rate) and write a commit marker whose unkeyed hash matches the edit."""
    import json

    import blake3

    from spotshift.checkpoint.format import StoredCheckpoint, canonical_json

    ck = StoredCheckpoint(store, job, checkpoint_id)
    meta = json.loads(ck.meta_bytes)
    meta["state"]["train_config"]["learning_rate"] = learning_rate
    raw = json.dumps(meta, indent=1, sort_keys=True).encode()
    store.put_bytes(ck.prefix + ck.commit["meta_key"], raw)
    commit = {k: ck.commit[k] for k in ("checkpoint_id", "meta_key", "step", "committed_at")}
    commit["meta_hash"] = blake3.blake3(raw).hexdigest()
    store.put_bytes(ck.prefix + "COMMIT", canonical_json(commit))
