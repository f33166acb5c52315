"""Segmented AES-256-GCM streams: how a checkpoint part (or a tensor delta) is stored encrypted.

A part is cut into segments of ``segment_bytes`` plaintext; each segment is sealed separately::

    nonce = part_index (u32 BE) || segment_index (u64 BE)
    aad   = b"spotshift/seg/1\\0" || part name || b"\\0" || segment_index (u64 BE) || final (u8)
    file  = MAGIC || segment_bytes (u32 BE) || part_index (u32 BE) || (ciphertext || tag)*

Nonces repeat never: every checkpoint has its own data key and each (part, segment) pair is used
once under it. The ``final`` flag in the associated data makes a stream truncated at a segment
boundary fail authentication; segment indexes make reordering fail; the part name makes a part
swapped with another part of the same checkpoint fail. Memory stays at one segment per stream.

The metadata of a checkpoint is sealed with the same data key (:func:`seal`), so a change to any
field of it is refused before a single tensor is trusted.
"""

from __future__ import annotations

import struct
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import BinaryIO

import blake3

from spotshift.errors import IntegrityError

MAGIC = b"SSCKENC1"
HEADER_BYTES = len(MAGIC) + 8
TAG_BYTES = 16
DEFAULT_SEGMENT_BYTES = 4 << 20
_SEAL_PART_INDEX = 0xFFFFFFFF


def _aesgcm(key: bytes):  # noqa: ANN202
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    return AESGCM(key)


def _nonce(part_index: int, segment_index: int) -> bytes:
    return struct.pack(">IQ", part_index, segment_index)


def _aad(part_name: str, segment_index: int, final: bool) -> bytes:
    return b"spotshift/seg/1\0" + part_name.encode() + b"\0" + struct.pack(">QB", segment_index, final)


def stored_size(plain_bytes: int, segment_bytes: int) -> int:
    """Bytes of the encrypted stream for ``plain_bytes`` of plaintext."""
    segments = max(1, -(-plain_bytes // segment_bytes))
    return HEADER_BYTES + plain_bytes + TAG_BYTES * segments


class _Lane:
    """One worker thread running calls in submission order, at most ``depth`` of them pending (the
    caller waits beyond that, so memory stays at ``depth`` segments); the first error is raised."""

    def __init__(self, name: str, depth: int):
        self._pool = ThreadPoolExecutor(1, thread_name_prefix=name)
        self._pending: deque[Future[None]] = deque()
        self._depth = depth

    def submit(self, fn: Callable[..., None], *args: object) -> None:
        self._pending.append(self._pool.submit(fn, *args))
        while len(self._pending) > self._depth or (self._pending and self._pending[0].done()):
            self._pending.popleft().result()

    def drain(self, *, check: bool = True) -> None:
        try:
            while self._pending:
                fut = self._pending.popleft()
                if check:
                    fut.result()
                else:
                    fut.exception()
        finally:
            self._pool.shutdown(wait=True)


class EncryptingWriter:
    """A write-only binary sink that encrypts into ``out`` segment by segment.

    It also hashes (BLAKE3) the plaintext and the stored bytes as they pass, so a checkpoint needs
    one pass over its tensors. ``timings`` (if given) accumulates ``serialize_s`` (plaintext
    hashing), ``encrypt_s`` and ``write_s`` (stored hashing and writing).

    ``pipelined``: the plaintext hash and the stored hash + write each run on a worker thread, in
    order, alongside the encryption (BLAKE3 and file writes release the GIL); :meth:`close`
    returns once all of it is done. The caller keeps written buffers unchanged until then.
    """

    def __init__(
        self,
        out: BinaryIO,
        key: bytes,
        *,
        part_index: int,
        part_name: str,
        segment_bytes: int = DEFAULT_SEGMENT_BYTES,
        timings: dict[str, float] | None = None,
        pipelined: bool = False,
    ):
        import time

        self._clock = time.perf_counter
        self.out = out
        self.aead = _aesgcm(key)
        self.part_index = part_index
        self.part_name = part_name
        self.segment_bytes = segment_bytes
        self.timings = timings if timings is not None else {}
        for k in ("serialize_s", "encrypt_s", "write_s"):
            self.timings.setdefault(k, 0.0)
        self._buf = bytearray()
        self._segment = 0
        self.plain_bytes = 0
        self.plain_hash = blake3.blake3(max_threads=blake3.blake3.AUTO)
        self.stored_hash = blake3.blake3(max_threads=blake3.blake3.AUTO)
        self.stored_bytes = 0
        self._emit(MAGIC + struct.pack(">II", segment_bytes, part_index))
        self.closed = False
        self._lanes = (_Lane("ckpt-plain-hash", 64), _Lane("ckpt-write", 4)) if pipelined else None

    def _run(self, lane: int, fn: Callable[..., None], data: object) -> None:
        if self._lanes is None:
            fn(data)
        else:
            self._lanes[lane].submit(fn, data)

    def _hash_plain(self, mv: memoryview) -> None:
        t0 = self._clock()
        self.plain_hash.update(mv)
        self.timings["serialize_s"] += self._clock() - t0  # hashing the plaintext is part of the format

    def _emit(self, data: bytes) -> None:
        t0 = self._clock()
        self.stored_hash.update(data)
        self.out.write(data)
        self.stored_bytes += len(data)
        self.timings["write_s"] += self._clock() - t0

    def _seal_segment(self, plain: bytes | bytearray | memoryview, final: bool) -> None:
        t0 = self._clock()
        sealed = self.aead.encrypt(
            _nonce(self.part_index, self._segment), plain, _aad(self.part_name, self._segment, final)
        )
        self.timings["encrypt_s"] += self._clock() - t0
        self._segment += 1
        self._run(1, self._emit, sealed)

    def write(self, data: bytes | bytearray | memoryview) -> int:
        """Append plaintext; full segments are sealed as soon as more data is known to follow."""
        mv = memoryview(data).cast("B")
        n = len(mv)
        self._run(0, self._hash_plain, mv)
        self.plain_bytes += n
        seg = self.segment_bytes
        if self._buf:  # top up the pending segment; seal it once more data is known to follow
            take = min(seg - len(self._buf), len(mv))
            self._buf += mv[:take]
            mv = mv[take:]
            if not mv:
                return n
            self._seal_segment(self._buf, final=False)
            self._buf = bytearray()
        # whole segments straight from the caller's buffer (no copy); the tail waits in _buf
        while len(mv) > seg:
            self._seal_segment(mv[:seg], final=False)
            mv = mv[seg:]
        self._buf += mv
        return n

    def close(self) -> None:
        """Seal the final segment (possibly empty). The caller closes ``out``."""
        if not self.closed:
            self._seal_segment(self._buf, final=True)
            self._buf = bytearray()
            self.closed = True
            if self._lanes is not None:
                for lane in self._lanes:
                    lane.drain()

    def abort(self) -> None:
        """Stop the worker threads (after a failure; their errors are dropped). ``out`` is the caller's."""
        self.closed = True
        if self._lanes is not None:
            for lane in self._lanes:
                lane.drain(check=False)


def iter_decrypt(
    stream: BinaryIO,
    key: bytes,
    *,
    part_index: int,
    part_name: str,
    segment_bytes: int,
    plain_bytes: int,
    what: str,
) -> Iterator[bytes]:
    """Yield the plaintext segments of an encrypted stream; :class:`IntegrityError` naming ``what``.

    The caller has already checked the stored size and hash; this still refuses anything that does
    not authenticate (wrong key, reordered or missing segments, a different part).
    """
    from cryptography.exceptions import InvalidTag

    head = stream.read(HEADER_BYTES)
    if len(head) != HEADER_BYTES or head[: len(MAGIC)] != MAGIC:
        raise IntegrityError(f"{what}: not a spotshift encrypted stream (bad header)")
    seg_size, idx = struct.unpack(">II", head[len(MAGIC) :])
    if seg_size != segment_bytes or idx != part_index:
        raise IntegrityError(f"{what}: stream header does not match the metadata (swapped part?)")
    aead = _aesgcm(key)
    segments = max(1, -(-plain_bytes // segment_bytes))
    remaining = plain_bytes
    for i in range(segments):
        want = min(segment_bytes, remaining)
        sealed = stream.read(want + TAG_BYTES)
        if len(sealed) != want + TAG_BYTES:
            raise IntegrityError(f"{what}: truncated at segment {i} of {segments}")
        final = i == segments - 1
        try:
            plain = aead.decrypt(_nonce(part_index, i), sealed, _aad(part_name, i, final))
        except InvalidTag:
            raise IntegrityError(
                f"{what}: segment {i} does not authenticate (tampered, swapped or wrong key)"
            ) from None
        remaining -= want
        yield plain
    if stream.read(1):
        raise IntegrityError(f"{what}: trailing bytes after the final segment")


def seal(key: bytes, associated: bytes) -> bytes:
    """A 16-byte tag authenticating ``associated`` under ``key`` (GCM over an empty plaintext)."""
    return _aesgcm(key).encrypt(_nonce(_SEAL_PART_INDEX, 0), b"", associated)


def check_seal(key: bytes, associated: bytes, tag: bytes, *, what: str) -> None:
    """Refuse ``associated`` bytes that do not match ``tag`` (:class:`IntegrityError` naming ``what``)."""
    from cryptography.exceptions import InvalidTag

    try:
        _aesgcm(key).decrypt(_nonce(_SEAL_PART_INDEX, 0), tag, associated)
    except InvalidTag:
        raise IntegrityError(f"{what}: metadata does not match its seal (tampered metadata)") from None
