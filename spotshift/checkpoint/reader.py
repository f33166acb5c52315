"""Reading one committed checkpoint: the marker and metadata at once, the parts after every check.

:class:`StoredCheckpoint` opens ``COMMIT`` and the metadata it names and checks their shape; its
``verify`` / ``read_parts`` run the verification order described in
:mod:`spotshift.checkpoint.format` (stored sizes and hashes, key, seal, commit MAC, content hash,
segment tags, plaintext hashes). Finding which checkpoint to open is :mod:`.catalog`'s.
"""

from __future__ import annotations

import base64
import contextlib
import hmac
import json
import os
import tempfile
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, BinaryIO

import blake3

from spotshift.atomic import remove_stale_temp_files
from spotshift.checkpoint import crypto
from spotshift.checkpoint.codec import (
    COMMIT_MAC_ALG,
    FORMAT,
    CheckpointRef,
    checkpoint_id_for,
    checkpoint_label,
    checkpoint_prefix,
    commit_mac,
    content_hash_of,
    sealed_bytes,
    tensors_of,
)
from spotshift.checkpoint.keys import KeyProvider
from spotshift.errors import IntegrityError, NotFoundError
from spotshift.home import cache_dir
from spotshift.sync.store import ChunkStore, LocalChunkStore


@contextlib.contextmanager
def open_object(store: ChunkStore, key: str) -> Iterator[BinaryIO]:
    """A readable binary file of one stored object (the file itself for local stores, else a temp copy)."""
    if isinstance(store, LocalChunkStore):
        try:
            f = open(store.root / key, "rb")  # noqa: SIM115
        except FileNotFoundError:
            raise NotFoundError(f"{key} not found in {store.url}") from None
        with f:
            yield f
        return
    tmpdir = cache_dir() / "ckpt-download"
    tmpdir.mkdir(parents=True, exist_ok=True)
    remove_stale_temp_files(tmpdir, owned=True)  # downloads of killed readers
    fd, tmp = tempfile.mkstemp(dir=tmpdir, prefix=f"{os.getpid()}.")
    os.close(fd)
    try:
        store.get_file(key, tmp)
        with open(tmp, "rb") as f:
            yield f
    finally:
        Path(tmp).unlink(missing_ok=True)


class StoredCheckpoint:
    """A committed checkpoint in a store: metadata available at once, tensors after verification."""

    def __init__(self, store: ChunkStore, job: str, checkpoint_id: str):
        self.store = store
        self.job = job
        self.checkpoint_id = checkpoint_id
        self.label = checkpoint_label(store, job, checkpoint_id)
        self.prefix = checkpoint_prefix(job, checkpoint_id)
        try:
            self.commit = json.loads(store.get_bytes(self.prefix + "COMMIT"))
        except NotFoundError:
            if any(True for _ in store.list_keys(self.prefix)):
                raise IntegrityError(f"{self.label}: not committed (no COMMIT marker)") from None
            raise NotFoundError(f"{self.label}: not found") from None
        except ValueError:
            raise IntegrityError(f"{self.label}: COMMIT marker is not JSON") from None
        if not isinstance(self.commit, dict):
            raise IntegrityError(f"{self.label}: COMMIT marker is not a JSON object")
        meta_key = str(self.commit.get("meta_key", ""))
        if not meta_key.startswith("meta-") or "/" in meta_key:
            raise IntegrityError(f"{self.label}: COMMIT marker names no metadata object")
        try:
            self.meta_bytes = store.get_bytes(self.prefix + meta_key)
        except NotFoundError:
            raise IntegrityError(f"{self.label}: metadata {meta_key} is missing") from None
        if "mac" in self.commit:  # keyed: checked with the data key (data_key())
            if self.commit.get("mac_alg") != COMMIT_MAC_ALG:
                raise IntegrityError(
                    f"{self.label}: COMMIT marker uses unknown MAC {self.commit.get('mac_alg')!r}"
                )
        elif "meta_hash" in self.commit:
            # a marker from before the keyed MAC: a consistency check only; the metadata seal,
            # checked by every verification, is what authenticates such a checkpoint
            if blake3.blake3(self.meta_bytes).hexdigest() != self.commit.get("meta_hash"):
                raise IntegrityError(f"{self.label}: metadata does not match the hash in COMMIT")
        else:
            raise IntegrityError(f"{self.label}: COMMIT marker carries no MAC")
        try:
            self.meta: dict[str, Any] = json.loads(self.meta_bytes)
        except ValueError:
            raise IntegrityError(f"{self.label}: metadata is not JSON") from None
        if not isinstance(self.meta, dict):
            raise IntegrityError(f"{self.label}: metadata is not a JSON object")
        if self.meta.get("format") != FORMAT:
            raise IntegrityError(f"{self.label}: unknown format {self.meta.get('format')!r}")
        if self.meta.get("checkpoint_id") != checkpoint_id or self.meta.get("job") != job:
            raise IntegrityError(f"{self.label}: metadata belongs to another checkpoint (swapped file?)")
        self._check_shape()

    def _check_shape(self) -> None:
        """Refuse metadata whose fields have the wrong types (one line, never a KeyError later)."""
        m = self.meta

        def well_formed() -> bool:
            enc, parts = m["encryption"], m["parts"]
            fields = ("ctx", "wrapped_key", "kek_id", "alg", "key_provider")
            sizes = ("index", "tensors", "plain_bytes", "stored_bytes")
            return (
                isinstance(m["state"], dict)
                and min(int(m["step"]), int(m["tokens"])) >= 0
                and isinstance(m["content_hash"], str)
                and int(enc["segment_bytes"]) > 0
                and all(isinstance(enc[k], str) for k in fields)
                and isinstance(parts, dict)
                and bool(parts)
                and all(
                    isinstance(pm["key"], str)  # a plain object name inside the checkpoint's prefix
                    and "/" not in pm["key"]
                    and not pm["key"].startswith(".")
                    and min(int(pm[k]) for k in sizes) >= 0
                    and isinstance(pm["plain_hash"], str)
                    and isinstance(pm["stored_hash"], str)
                    for pm in parts.values()
                )
            )

        try:
            ok = well_formed()
        except (KeyError, TypeError, ValueError, AttributeError):
            ok = False
        if not ok:
            raise IntegrityError(f"{self.label}: metadata is malformed")

    @property
    def step(self) -> int:
        return int(self.meta["step"])

    @property
    def content_hash(self) -> str:
        return str(self.meta["content_hash"])

    @property
    def stored_bytes(self) -> int:
        """Bytes of the stored checkpoint: parts + metadata + commit marker."""
        return sum(int(p["stored_bytes"]) for p in self.meta["parts"].values()) + len(self.meta_bytes)

    @property
    def plain_bytes(self) -> int:
        return sum(int(p["plain_bytes"]) for p in self.meta["parts"].values())

    def ref(self) -> CheckpointRef:
        return CheckpointRef(self.store.url, self.job, self.checkpoint_id, self.step, self.content_hash)

    def part_names(self) -> list[str]:
        return sorted(self.meta["parts"], key=lambda p: self.meta["parts"][p]["index"])

    # -- checks that need no key ------------------------------------------------------------------------
    def stored_damage(self) -> list[str]:
        """Parts that are missing or not the size the metadata says (``stat`` only: no hashing, no key)."""
        seg = int(self.meta["encryption"]["segment_bytes"])
        damage = []
        for part in self.part_names():
            pm = self.meta["parts"][part]
            size = self.store.size(self.prefix + pm["key"])
            expected = int(pm["stored_bytes"])
            if size is None:
                damage.append(f"part {part} is missing")
            elif expected != crypto.stored_size(int(pm["plain_bytes"]), seg):
                damage.append(f"part {part} sizes in the metadata disagree")
            elif size != expected:
                what = "truncated" if size < expected else "has extra bytes"
                damage.append(f"part {part} {what} ({size} of {expected} bytes)")
        return damage

    def check_stored(self) -> None:
        """Sizes and BLAKE3 hashes of every stored part (truncation, flipped bytes, swapped files)."""
        damage = self.stored_damage()
        if damage:
            raise IntegrityError(f"{self.label}: {damage[0]}")
        for part in self.part_names():
            pm = self.meta["parts"][part]
            h = blake3.blake3(max_threads=blake3.blake3.AUTO)
            with open_object(self.store, self.prefix + pm["key"]) as f:
                while chunk := f.read(8 << 20):
                    h.update(chunk)
            if h.hexdigest() != pm["stored_hash"]:
                raise IntegrityError(
                    f"{self.label}: part {part} does not match its hash (corrupt or swapped)"
                )

    # -- checks that need the key ------------------------------------------------------------------------
    def data_key(self, keys: KeyProvider) -> bytes:
        """Unwrap the data key with ``keys`` and check the metadata seal."""
        enc = self.meta["encryption"]
        if enc.get("kek_id") != keys.key_id:
            raise IntegrityError(
                f"{self.label}: encrypted under key {enc.get('kek_id')}, but the key provider has {keys.key_id} "
                "(wrong key)"
            )
        context = {"spotshift:job": self.job, "spotshift:ctx": str(enc["ctx"])}
        try:
            wrapped = base64.b64decode(enc["wrapped_key"], validate=True)
            tag = base64.b64decode(enc["meta_tag"], validate=True)
        except (KeyError, ValueError):
            raise IntegrityError(f"{self.label}: encryption envelope is malformed") from None
        key = keys.unwrap(wrapped, context, what=self.label)
        crypto.check_seal(key, sealed_bytes(self.meta), tag, what=self.label)
        if "mac" in self.commit and not hmac.compare_digest(
            commit_mac(key, self.commit, self.meta_bytes), str(self.commit["mac"])
        ):
            raise IntegrityError(
                f"{self.label}: commit marker does not authenticate (forged, or not this checkpoint's)"
            )
        return key

    def iter_part(self, part: str, data_key: bytes) -> Iterator[bytes]:
        """Plaintext segments of one part (authenticated; the plaintext hash is checked at the end)."""
        pm = self.meta["parts"][part]
        h = blake3.blake3(max_threads=blake3.blake3.AUTO)
        with open_object(self.store, self.prefix + pm["key"]) as f:
            for plain in crypto.iter_decrypt(
                f,
                data_key,
                part_index=int(pm["index"]),
                part_name=part,
                segment_bytes=int(self.meta["encryption"]["segment_bytes"]),
                plain_bytes=int(pm["plain_bytes"]),
                what=f"{self.label}: part {part}",
            ):
                h.update(plain)
                yield plain
        if h.hexdigest() != pm["plain_hash"]:
            raise IntegrityError(f"{self.label}: part {part} plaintext does not match its hash")

    def read_parts(self, keys: KeyProvider, *, check_stored: bool = True) -> dict[str, bytes]:
        """Every part's plaintext safetensors bytes, fully verified (stored hashes first, content hash last)."""
        if check_stored:
            self.check_stored()
        key = self.data_key(keys)
        out: dict[str, bytes] = {}
        for part in self.part_names():
            buf = bytearray()
            for seg in self.iter_part(part, key):
                buf += seg
            out[part] = bytes(buf)
        self._check_content_hash({p: self.meta["parts"][p]["plain_hash"] for p in out})
        return out

    def _check_content_hash(self, plain_hashes: Mapping[str, str]) -> None:
        m = self.meta
        if (
            content_hash_of(self.job, int(m["step"]), int(m["tokens"]), m["state"], plain_hashes)
            != m["content_hash"]
        ):
            raise IntegrityError(f"{self.label}: content hash does not match")
        if checkpoint_id_for(int(m["step"]), m["content_hash"]) != self.checkpoint_id:
            raise IntegrityError(f"{self.label}: id does not match its content hash")

    def verified_data_key(self, keys: KeyProvider) -> bytes:
        """Every check (stored sizes and hashes, key, seal, commit MAC, content hash, every segment and
        plaintext hash), decrypting in a stream; returns the data key (a copy re-keys its marker with it)."""
        self.check_stored()
        key = self.data_key(keys)
        self._check_content_hash({p: self.meta["parts"][p]["plain_hash"] for p in self.part_names()})
        for part in self.part_names():
            for _ in self.iter_part(part, key):
                pass
        return key

    def verify(self, keys: KeyProvider) -> dict[str, Any]:
        """Every check (:meth:`verified_data_key`); the report ``spotshift ckpt verify --json`` prints."""
        t0 = time.perf_counter()
        self.verified_data_key(keys)
        return {
            "checkpoint": f"{self.job}/{self.checkpoint_id}",
            "store": self.store.url,
            "ok": True,
            "step": self.step,
            "content_hash": self.content_hash,
            "parts": len(self.part_names()),
            "stored_bytes": self.stored_bytes,
            "seconds": round(time.perf_counter() - t0, 4),
        }

    def load_tensors(self, keys: KeyProvider) -> dict[str, dict[str, Any]]:
        """Every part as torch tensors (after full verification)."""
        return tensors_of(self.read_parts(keys))

    def summary(self) -> dict[str, Any]:
        """What ``spotshift ckpt inspect`` shows: no key needed, nothing decrypted.

        ``damage`` lists parts missing or of the wrong size (``stat`` against the metadata) and
        ``ok`` is False when there is any; hashes, seal and MAC need ``verify`` (and the key).
        """
        m = self.meta
        state = m.get("state", {})
        damage = self.stored_damage()
        sizes = {p: self.store.size(self.prefix + pm["key"]) for p, pm in m["parts"].items()}
        return {
            "ok": not damage,
            "damage": damage,
            "checkpoint": f"{self.job}/{self.checkpoint_id}",
            "store": self.store.url,
            "job": self.job,
            "step": self.step,
            "tokens": m.get("tokens"),
            "kind": m.get("kind"),
            "location": m.get("location"),
            "created_at": m.get("created_at"),
            "committed_at": self.commit.get("committed_at"),
            "content_hash": self.content_hash,
            "stored_bytes": self.stored_bytes,
            "plain_bytes": self.plain_bytes,
            "parts": {
                p: {
                    **{k: pm[k] for k in ("tensors", "plain_bytes", "stored_bytes")},
                    "found_bytes": sizes[p],
                }
                for p, pm in m["parts"].items()
            },
            "model": state.get("model_config"),
            "train": state.get("train_config"),
            "data_position": state.get("data_position"),
            "num_threads": state.get("num_threads"),
            "versions": m.get("versions"),
            "encryption": {k: m["encryption"][k] for k in ("alg", "key_provider", "kek_id", "segment_bytes")},
        }
