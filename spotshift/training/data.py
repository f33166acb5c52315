"""Token shards from a registered dataset, and the deterministic batch sampler.

Tokenization is byte-level (vocabulary 256): every byte of every file of the dataset (files in
sorted relative-path order) is a token. Shards are ``uint8`` files of at most ``SHARD_TOKENS``
tokens under ``$SPOTSHIFT_HOME/cache/tokens/<dataset>/<listing digest>/`` with an ``index.json``
that records the BLAKE3 of the whole token stream; the cache is keyed by the file listing (path,
size, mtime) so a changed dataset is re-tokenized.

The batch of step ``s`` is a pure function of ``(seed, s, token stream)``: windows of
``seq_len + 1`` tokens at offsets drawn from a generator seeded by ``hash(seed, s)``. Resuming at
any step needs nothing but the step; the checkpoint records the stream hash so a resume on
different data is refused.
"""

from __future__ import annotations

import bisect
import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

import numpy as np

from spotshift.atomic import atomic_write_json
from spotshift.errors import ConfigError
from spotshift.home import cache_dir

SHARD_TOKENS = 64 << 20
SAMPLER = "random-windows/v1"


def dataset_files(source: str) -> tuple[Path, list[Path]]:
    """The root directory (or file) of a dataset source (``file://`` URL or local path) and its files."""
    parsed = urlparse(source)
    if parsed.scheme not in ("", "file"):
        raise ConfigError(f"dataset source {source!r}: the trainer reads file:// URLs or local paths")
    root = Path(unquote(parsed.path) if parsed.scheme else source).expanduser().resolve()
    if root.is_file():
        return root.parent, [root]
    if not root.is_dir():
        raise ConfigError(f"dataset source {source!r} does not exist")
    files = sorted(
        p
        for p in root.rglob("*")
        if p.is_file() and not any(s.startswith(".") for s in p.relative_to(root).parts)
    )
    if not files:
        raise ConfigError(f"dataset source {source!r} has no files")
    return root, files


@dataclass(frozen=True)
class TokenShards:
    """Tokenized dataset: shard paths, their lengths and the BLAKE3 of the whole stream."""

    dataset: str
    shards: tuple[Path, ...]
    lengths: tuple[int, ...]
    stream_hash: str

    @property
    def tokens(self) -> int:
        return sum(self.lengths)


def prepare_tokens(dataset: str, source: str, cache_root: Path | None = None) -> TokenShards:
    """Tokenize ``source`` into shards (cached); :class:`ConfigError` when it cannot be read."""
    import blake3

    root, files = dataset_files(source)
    listing = hashlib.sha256()
    for f in files:
        st = f.stat()
        listing.update(f"{f.relative_to(root)}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    out = (cache_root or cache_dir() / "tokens") / dataset / listing.hexdigest()[:16]
    index_path = out / "index.json"
    if index_path.is_file():
        idx = json.loads(index_path.read_text())
        return TokenShards(
            dataset, tuple(out / s for s in idx["shards"]), tuple(idx["lengths"]), str(idx["stream_hash"])
        )
    out.mkdir(parents=True, exist_ok=True)
    h = blake3.blake3()
    names: list[str] = []
    lengths: list[int] = []
    shard = bytearray()

    def flush() -> None:
        name = f"shard-{len(names):05d}.bin"
        tmp = out / f".{name}.{os.getpid()}"
        tmp.write_bytes(shard)
        os.replace(tmp, out / name)
        names.append(name)
        lengths.append(len(shard))

    for f in files:
        with open(f, "rb") as src:
            while chunk := src.read(8 << 20):
                h.update(chunk)
                shard += chunk
                while len(shard) >= SHARD_TOKENS:
                    rest = shard[SHARD_TOKENS:]
                    del shard[SHARD_TOKENS:]
                    flush()
                    shard = rest
    if shard or not names:
        flush()
    atomic_write_json(
        index_path,
        {
            "dataset": dataset,
            "source": source,
            "shards": names,
            "lengths": lengths,
            "stream_hash": h.hexdigest(),
        },
    )
    return TokenShards(dataset, tuple(out / n for n in names), tuple(lengths), h.hexdigest())


def _step_seed(seed: int, step: int) -> int:
    digest = hashlib.sha256(f"spotshift-batch\0{seed}\0{step}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


class BatchSampler:
    """Batches of ``batch_size`` windows of ``seq_len + 1`` tokens; the batch of a step depends only on (seed, step)."""

    def __init__(self, shards: TokenShards, *, seq_len: int, batch_size: int, seed: int):
        self.shards = shards
        self.seq_len = seq_len
        self.batch_size = batch_size
        self.seed = seed
        starts = [max(0, n - seq_len) for n in shards.lengths]  # windows of seq_len + 1 tokens per shard
        self._cum = np.cumsum(starts).tolist()
        if not self._cum or self._cum[-1] == 0:
            raise ConfigError(
                f"dataset {shards.dataset!r} has {shards.tokens} tokens: needs at least seq_len + 1 = {seq_len + 1}"
            )
        self._arrays = [
            np.memmap(p, dtype=np.uint8, mode="r") if n else np.zeros(0, np.uint8)
            for p, n in zip(shards.shards, shards.lengths, strict=True)
        ]

    def batch(self, step: int) -> tuple[Any, Any]:
        """(inputs, targets) int64 tensors of shape (batch_size, seq_len) for training step ``step`` (1-based)."""
        import torch

        g = torch.Generator().manual_seed(_step_seed(self.seed, step))
        picks = torch.randint(0, int(self._cum[-1]), (self.batch_size,), generator=g).tolist()
        rows = np.empty((self.batch_size, self.seq_len + 1), dtype=np.int64)
        for i, p in enumerate(picks):
            shard = bisect.bisect_right(self._cum, p)
            start = p - (self._cum[shard - 1] if shard else 0)
            rows[i] = self._arrays[shard][start : start + self.seq_len + 1]
        t = torch.from_numpy(rows)
        return t[:, :-1], t[:, 1:]

    def position(self, step: int) -> dict[str, Any]:
        """The data position recorded in a checkpoint taken after ``step`` steps."""
        return {
            "sampler": SAMPLER,
            "next_step": step + 1,
            "batches_consumed": step,
            "dataset": self.shards.dataset,
            "stream_hash": self.shards.stream_hash,
            "stream_tokens": self.shards.tokens,
        }
