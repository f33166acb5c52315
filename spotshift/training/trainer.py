"""The deterministic trainer: config, one optimizer step at a time, checkpoint capture and restore.

Bitwise reproducibility on CPU rests on: ``torch.use_deterministic_algorithms(True)``; a fixed
thread count (``num_threads``, recorded in every checkpoint and re-applied on resume); parameters
initialised right after ``torch.manual_seed(seed)``; a batch that is a pure function of (seed,
step) (:class:`~spotshift.training.data.BatchSampler`); a learning rate that is a pure function of
the step; and a checkpoint that captures weights, AdamW moments and step counts, and the torch,
Python and numpy RNG states. A run resumed from the checkpoint of step k therefore computes the
same bits at step N as the run that never stopped.
"""

from __future__ import annotations

import base64
import fnmatch
import math
import random
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any

import numpy as np
import torch
from torch.nn import functional as F  # noqa: N812

from spotshift.checkpoint.format import CheckpointPayload, StoredCheckpoint, runtime_versions, tensors_of
from spotshift.checkpoint.keys import KeyProvider
from spotshift.errors import ConfigError, IntegrityError, build_record
from spotshift.training.data import BatchSampler, TokenShards
from spotshift.training.model import TinyGPT, check_model_config
from spotshift.training.request import job_train_config


@dataclass(frozen=True)
class TrainConfig:
    """Everything that determines the weights a run computes (and nothing that does not)."""

    job: str
    dataset: str
    model: dict[str, int]
    total_steps: int
    batch_size: int = 8
    learning_rate: float = 3e-4
    seed: int = 0
    warmup_steps: int | None = None  # default: min(100, total_steps // 10)
    min_lr_ratio: float = 0.1
    weight_decay: float = 0.01
    grad_clip: float = 1.0
    trainable: tuple[str, ...] | None = None  # fnmatch patterns of parameter names; None: all
    num_threads: int = 1

    def __post_init__(self) -> None:
        object.__setattr__(self, "model", check_model_config(self.model))
        if self.trainable is not None:
            object.__setattr__(self, "trainable", tuple(self.trainable))
        for ok, what in [
            (self.total_steps > 0, "total_steps must be > 0"),
            (self.batch_size > 0, "batch_size must be > 0"),
            (self.learning_rate > 0, "learning_rate must be > 0"),
            (self.num_threads > 0, "num_threads must be > 0"),
            (self.grad_clip > 0, "grad_clip must be > 0"),
        ]:
            if not ok:
                raise ConfigError(f"job {self.job!r}: {what}")

    @classmethod
    def from_job(cls, job: Any, **overrides: Any) -> TrainConfig:
        """From a :class:`spotshift.jobs.TrainingJob`, with optional overrides."""
        base = {**job_train_config(job), **overrides}
        return cls.from_dict(base)

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any]) -> TrainConfig:
        return build_record(cls, raw, "train config")

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["trainable"] = list(self.trainable) if self.trainable is not None else None
        return d

    def with_overrides(self, overrides: Mapping[str, Any]) -> TrainConfig:
        known = {f.name for f in fields(self)} - {"job", "dataset", "model"}
        bad = sorted(set(overrides) - known)
        if bad:
            raise ConfigError(f"train config: cannot override {', '.join(bad)}")
        return replace(self, **dict(overrides))

    @property
    def warmup(self) -> int:
        return self.warmup_steps if self.warmup_steps is not None else min(100, self.total_steps // 10)

    def lr_at(self, step: int) -> float:
        """Linear warm-up, then cosine decay to ``min_lr_ratio``; a pure function of the step (1-based)."""
        w = self.warmup
        if w and step <= w:
            return self.learning_rate * step / w
        span = max(1, self.total_steps - w)
        progress = min(1.0, (step - w) / span)
        ratio = self.min_lr_ratio + (1 - self.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))
        return self.learning_rate * ratio


@dataclass
class StepStats:
    """What one optimizer step measured."""

    step: int
    loss: float
    grad_norm: float
    lr: float
    activations: dict[str, list[float]] = field(default_factory=dict)  # layer -> [mean, std, absmax]


def configure_determinism(num_threads: int) -> None:
    """Process-wide switches every trainer (and every resume) runs under."""
    torch.use_deterministic_algorithms(True)
    torch.set_num_threads(num_threads)


class Trainer:
    """One model, its AdamW optimizer and the batch sampler; steps and checkpoints."""

    def __init__(self, cfg: TrainConfig, shards: TokenShards, *, collect_activations: bool = False):
        if shards.dataset != cfg.dataset:
            raise ConfigError(f"job {cfg.job!r} trains on {cfg.dataset!r}, not {shards.dataset!r}")
        configure_determinism(cfg.num_threads)
        self.cfg = cfg
        torch.manual_seed(cfg.seed)
        random.seed(cfg.seed)
        np.random.seed(cfg.seed % (2**32))
        self.model = TinyGPT.from_config(cfg.model)
        self.trainable_names: list[str] = []
        for name, p in self.model.named_parameters():
            train = cfg.trainable is None or any(fnmatch.fnmatchcase(name, pat) for pat in cfg.trainable)
            p.requires_grad_(train)
            if train:
                self.trainable_names.append(name)
        if not self.trainable_names:
            raise ConfigError(f"job {cfg.job!r}: trainable patterns {cfg.trainable} match no parameter")
        params = dict(self.model.named_parameters())
        self.params = [params[n] for n in self.trainable_names]
        self.optimizer = torch.optim.AdamW(
            self.params, lr=cfg.learning_rate, betas=(0.9, 0.95), weight_decay=cfg.weight_decay, foreach=False
        )
        self.sampler = BatchSampler(
            shards, seq_len=cfg.model["seq_len"], batch_size=cfg.batch_size, seed=cfg.seed
        )
        self.step = 0
        self.tokens = 0
        self.collect_activations = collect_activations
        self._acts: dict[str, list[float]] = {}
        if collect_activations:
            for i, block in enumerate(self.model.blocks):
                block.register_forward_hook(self._hook(f"blocks.{i}"))
            self.model.ln_f.register_forward_hook(self._hook("ln_f"))

    def _hook(self, name: str):  # noqa: ANN202
        def hook(_module: Any, _inp: Any, out: torch.Tensor) -> None:
            d = out.detach()
            self._acts[name] = [float(d.mean()), float(d.std()), float(d.abs().max())]

        return hook

    def train_step(self) -> StepStats:
        """Run optimizer step ``self.step + 1``."""
        step = self.step + 1
        x, y = self.sampler.batch(step)
        lr = self.cfg.lr_at(step)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        logits = self.model(x)
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1))
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(self.params, self.cfg.grad_clip)
        self.optimizer.step()
        self.step = step
        self.tokens += x.numel()
        acts = dict(self._acts) if self.collect_activations else {}
        return StepStats(step, float(loss.detach()), float(grad_norm), lr, acts)

    # -- checkpoints -------------------------------------------------------------------------------------
    def state_json(self) -> dict[str, Any]:
        """The JSON half of the training state (hashed into the checkpoint's identity)."""
        groups = [
            {k: (list(v) if isinstance(v, tuple) else v) for k, v in g.items() if k not in ("params", "lr")}
            for g in self.optimizer.state_dict()["param_groups"]
        ]
        return {
            "train_config": self.cfg.to_dict(),
            "model_config": self.cfg.model,
            "num_threads": torch.get_num_threads(),
            "optimizer": {"type": "AdamW", "param_groups": groups, "param_names": self.trainable_names},
            "rng": rng_state(),
            "data_position": self.sampler.position(self.step),
        }

    def payload(self, *, kind: str, location: str) -> CheckpointPayload:
        """A checkpoint payload of the current state (tensors are views, valid until the next step)."""
        optim: dict[str, torch.Tensor] = {}
        state = self.optimizer.state_dict()["state"]
        for i, name in enumerate(self.trainable_names):
            for key, value in state.get(i, {}).items():
                optim[f"{key}/{name}"] = value if torch.is_tensor(value) else torch.tensor(value)
        return CheckpointPayload(
            job=self.cfg.job,
            step=self.step,
            tokens=self.tokens,
            kind=kind,
            location=location,
            state=self.state_json(),
            parts={"model": self.model.state_dict(), "optim": optim},
            versions=runtime_versions(),
        )

    def load(
        self,
        ckpt: StoredCheckpoint,
        keys: KeyProvider | None = None,
        *,
        parts: dict[str, bytes] | None = None,
    ) -> None:
        """Restore weights, optimizer, RNG states and position from a checkpoint, verified with ``keys``
        here or already (``parts``: its verified plaintext parts, from ``open_newest_verified``)."""
        state = ckpt.meta["state"]
        pos = state.get("data_position", {})
        if pos.get("stream_hash") != self.sampler.shards.stream_hash:
            raise ConfigError(
                f"{ckpt.label}: trained on dataset stream {str(pos.get('stream_hash'))[:12]}, "
                f"but {self.cfg.dataset!r} now reads as {self.sampler.shards.stream_hash[:12]}: resume would not be exact"
            )
        if state.get("optimizer", {}).get("param_names") != self.trainable_names:
            raise ConfigError(f"{ckpt.label}: trainable parameters differ from the job's")
        if parts is None:
            if keys is None:
                raise ConfigError(f"{ckpt.label}: loading needs the key provider or verified parts")
            parts = ckpt.read_parts(keys)
        tensors = tensors_of(parts)
        missing, unexpected = self.model.load_state_dict(tensors["model"], strict=False)
        if missing or unexpected:
            raise IntegrityError(
                f"{ckpt.label}: model tensors do not match the config ({len(missing)} missing)"
            )
        per_param: dict[int, dict[str, torch.Tensor]] = {}
        index = {n: i for i, n in enumerate(self.trainable_names)}
        for key, value in tensors["optim"].items():
            what, _, name = key.partition("/")
            if name not in index:
                raise IntegrityError(f"{ckpt.label}: optimizer state for unknown parameter {name}")
            per_param.setdefault(index[name], {})[what] = value
        groups = []
        for g in state["optimizer"]["param_groups"]:
            g = {k: (tuple(v) if k == "betas" else v) for k, v in g.items()}
            g["lr"] = self.cfg.learning_rate
            g["params"] = list(range(len(self.trainable_names)))
            groups.append(g)
        self.optimizer.load_state_dict({"state": per_param, "param_groups": groups})
        set_rng_state(state["rng"])
        self.step = int(ckpt.meta["step"])
        self.tokens = int(ckpt.meta["tokens"])


def rng_state() -> dict[str, Any]:
    """The Python, NumPy and torch (CPU, and CUDA when initialised) RNG states as JSON.

    What a checkpoint carries so that a resumed run draws the same random numbers as the run
    that never stopped; :func:`set_rng_state` puts them back.
    """
    np_state = np.random.get_state()
    out: dict[str, Any] = {
        "torch": base64.b64encode(torch.get_rng_state().numpy().tobytes()).decode(),
        "python": _python_rng_to_json(random.getstate()),
        "numpy": [np_state[0], np_state[1].tolist(), int(np_state[2]), int(np_state[3]), float(np_state[4])],
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        out["cuda"] = [base64.b64encode(s.numpy().tobytes()).decode() for s in torch.cuda.get_rng_state_all()]
    return out


def set_rng_state(rng: Mapping[str, Any]) -> None:
    """Restore the RNG states :func:`rng_state` captured (CUDA's only when this process has CUDA)."""
    torch.set_rng_state(torch.frombuffer(bytearray(base64.b64decode(rng["torch"])), dtype=torch.uint8))
    random.setstate(_python_rng_from_json(rng["python"]))
    n = rng["numpy"]
    np.random.set_state((n[0], np.array(n[1], dtype=np.uint32), n[2], n[3], n[4]))
    if rng.get("cuda") and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(
            [torch.frombuffer(bytearray(base64.b64decode(s)), dtype=torch.uint8) for s in rng["cuda"]]
        )


def _python_rng_to_json(state: tuple[Any, ...]) -> list[Any]:
    version, internal, gauss = state
    return [version, list(internal), gauss]


def _python_rng_from_json(doc: list[Any]) -> tuple[Any, ...]:
    return (doc[0], tuple(doc[1]), doc[2])


def config_for_resume(ckpt: StoredCheckpoint, overrides: Mapping[str, Any] | None = None) -> TrainConfig:
    """The config a checkpoint was trained with (it wins over the declaration), plus explicit overrides."""
    raw = ckpt.meta["state"].get("train_config")
    if not isinstance(raw, dict):
        raise IntegrityError(f"{ckpt.label}: no train_config in its state")
    cfg = TrainConfig.from_dict(raw)
    return cfg.with_overrides(overrides) if overrides else cfg
