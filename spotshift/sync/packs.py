"""Pack files: small chunks written back to back into a few large objects, as restic and casync do.

A store with one object per chunk pays one file (one PUT, one GET, one listing entry) per chunk:
at 64 KiB chunks that is 8,192 objects for 512 MiB, and the per-object cost dominates a first
push. So chunks shorter than :data:`PACK_CHUNK_LIMIT` are written into pack files of about
:data:`PACK_TARGET_BYTES`::

    packs/<id[:2]>/<id>      the chunks' bytes, back to back (no header: the index is elsewhere)

``id`` is the BLAKE2b-128 of the pack's chunk digests in order: a pack is named by what it
holds, so two writers of the same pack write the same bytes, and a push rerun after a kill plans
the same packs and skips those already there (resume, as loose chunks do). Where each chunk is — the *pack index*, digest -> (pack id,
offset) — is recorded in the manifest of every snapshot that uses it (format 2, see
:mod:`spotshift.sync.manifest`); a reader asks for the chunk's byte range and checks its digest
before using it (:func:`read_chunk`). Larger chunks (the default 1/4/16 MiB chunking never makes a
packed one) stay objects of their own, so pushes at the default sizes are laid out as before.

Durability is the chunk store's: a pack is written whole (temp name + link locally, one PUT on
object stores) and made durable by the writer's flush before the manifest that names it is
committed; a pack nothing names (a killed push) is garbage that ``sync prune`` removes after its
grace period. A chunk whose packed copy is damaged is read from a loose copy ``chunks/..`` when
one exists: that is what ``sync verify --repair`` writes, so packs are never rewritten in place.

Prune deletes a pack only when no kept snapshot's pack index names it (a pack partly referenced
is kept whole; no repacking — its dead bytes are the price of never rewriting a live object).
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from spotshift.errors import IntegrityError, NotFoundError, SpotshiftError
from spotshift.sync.store import ChunkStore, LocalChunkStore, chunk_key

PACKS_PREFIX = "packs/"
#: chunks shorter than this go into pack files; longer ones are objects of their own
PACK_CHUNK_LIMIT = 1 << 20
#: a pack is closed once it holds this many bytes
PACK_TARGET_BYTES = 16 << 20

#: largest offset a pack index may name (1 TiB: packs are tens of MiB)
MAX_PACK_OFFSET = 1 << 40

_PACK_ID = re.compile(r"[0-9a-f]{32}")

Location = tuple[str, int]  # (pack id, offset)


def pack_key(pack_id: str) -> str:
    """Key of a pack: ``packs/<first two hex digits>/<id>``; :class:`IntegrityError` for a bad id."""
    if not _PACK_ID.fullmatch(pack_id):
        raise IntegrityError(f"pack id {pack_id[:40]!r} is not 32 hex digits")
    return f"{PACKS_PREFIX}{pack_id[:2]}/{pack_id}"


def is_packed(length: int) -> bool:
    """Whether a chunk of ``length`` bytes is written into a pack."""
    return length < PACK_CHUNK_LIMIT


class PackPlan:
    """Chunks to write, split into loose chunks and packs, with each packed chunk's location.

    Planned before anything is written, so each pack is one independent task (chunks in the
    order given — file order keeps reads sequential) and the pack index is known up front.
    """

    def __init__(self, chunks: Iterable[tuple[bytes, int]], target_bytes: int | None = None):
        target_bytes = target_bytes or PACK_TARGET_BYTES
        self.loose: list[tuple[bytes, int]] = []
        self.packs: list[tuple[str, list[tuple[bytes, int]]]] = []
        self.locations: dict[bytes, Location] = {}
        current: list[tuple[bytes, int]] = []
        size = 0
        for dig, length in chunks:
            if not is_packed(length):
                self.loose.append((dig, length))
                continue
            current.append((dig, length))
            size += length
            if size >= target_bytes:
                self._close(current)
                current, size = [], 0
        if current:
            self._close(current)

    def _close(self, chunks: list[tuple[bytes, int]]) -> None:
        pack_id, locations = pack_layout(chunks)
        self.locations.update(locations)
        self.packs.append((pack_id, chunks))


def pack_layout(chunks: Sequence[tuple[bytes, int]]) -> tuple[str, dict[bytes, Location]]:
    """A pack of ``chunks`` (digest, length), back to back in order: its id — the BLAKE2b-128 of the
    digests in order (named by what it holds) — and each chunk's location in it."""
    pack_id = hashlib.blake2b(b"".join(d for d, _ in chunks), digest_size=16).hexdigest()
    locations: dict[bytes, Location] = {}
    offset = 0
    for dig, length in chunks:
        locations[dig] = (pack_id, offset)
        offset += length
    return pack_id, locations


def has_pack(store: ChunkStore, pack_id: str, size: int) -> bool:
    """Whether the pack is in ``store`` whole (a rerun after a kill skips it, as it skips chunks)."""
    return store.size(pack_key(pack_id)) == size


def write_pack(store: ChunkStore, pack_id: str, data: bytearray) -> int:
    """Write one pack (its chunks' bytes in plan order, filled in place by the caller) in one
    sequential write, write-once (an existing pack of that id holds the same bytes); returns its size.
    """
    payload = data if isinstance(store, LocalChunkStore) else bytes(data)  # SDKs want bytes
    store.put_bytes(pack_key(pack_id), payload, if_absent=True)  # type: ignore[arg-type]
    return len(data)


def read_chunk(
    store: ChunkStore,
    dig: bytes,
    length: int,
    hfn: Callable[[Any], bytes],
    location: Location | None,
) -> bytes | None:
    """The chunk's bytes, checked against its digest: from its pack range when it has a location,
    else (or when that copy is damaged or gone) from its own object. None when no good copy exists.
    """
    if location is not None:
        try:
            data = store.get_range(pack_key(location[0]), location[1], length)
        except (NotFoundError, IntegrityError):
            data = None
        if data is not None and len(data) == length and hfn(data) == dig:
            return data
    try:
        data = store.get_bytes(chunk_key(dig.hex()))
    except NotFoundError:
        return None
    return data if len(data) == length and hfn(data) == dig else None


def chunk_state(
    store: ChunkStore,
    dig: bytes,
    length: int,
    hfn: Callable[[Any], bytes],
    location: Location | None,
    pack_sizes: dict[str, int | None] | None = None,
) -> str:
    """``"ok"``, ``"missing"`` or ``"corrupt"``. With ``hfn`` the bytes are read and checked; with
    ``hfn=None`` only presence and size (a pack's size must cover the chunk's range)."""
    if hfn is not None:
        try:
            if read_chunk(store, dig, length, hfn, location) is not None:
                return "ok"
        except SpotshiftError:
            pass
        return _absent_state(store, dig, location)
    if location is not None and pack_sizes is not None:
        if location[0] not in pack_sizes:
            pack_sizes[location[0]] = store.size(pack_key(location[0]))
        size = pack_sizes[location[0]]
        if size is not None and location[1] + length <= size:
            return "ok"
    size = store.size(chunk_key(dig.hex()))
    if size == length:
        return "ok"
    return "missing" if size is None and not _pack_exists(store, location, pack_sizes) else "corrupt"


def _pack_exists(store: ChunkStore, location: Location | None, sizes: dict[str, int | None] | None) -> bool:
    if location is None:
        return False
    if sizes is not None and location[0] in sizes:
        return sizes[location[0]] is not None
    return store.exists(pack_key(location[0]))


def _absent_state(store: ChunkStore, dig: bytes, location: Location | None) -> str:
    if store.exists(chunk_key(dig.hex())) or _pack_exists(store, location, None):
        return "corrupt"
    return "missing"


def present_in_packs(
    store: ChunkStore, chunks: dict[bytes, int], locations: dict[bytes, Location]
) -> dict[bytes, Location]:
    """Of ``chunks`` (digest -> length), those whose pack (per ``locations``) is in ``store`` and
    long enough for their range: one size lookup per pack, not one request per chunk."""
    sizes: dict[str, int | None] = {}
    out: dict[bytes, Location] = {}
    for dig, length in chunks.items():
        loc = locations.get(dig)
        if loc is None:
            continue
        if loc[0] not in sizes:
            sizes[loc[0]] = store.size(pack_key(loc[0]))
        size = sizes[loc[0]]
        if size is not None and loc[1] + length <= size:
            out[dig] = loc
    return out


def referenced_packs(locations: Iterable[Location]) -> set[str]:
    """The pack ids a pack index names."""
    return {pack for pack, _ in locations}


def pack_index_from_columns(cols: dict[str, list[Any]]) -> dict[bytes, Location]:
    """The pack index of a format-2 manifest's columns, checked as untrusted input: pack ids of 32
    hex digits, offsets within bounds, each chunk at one place only (:class:`IntegrityError`)."""
    out: dict[bytes, Location] = {}
    for i, (pack, off) in enumerate(zip(cols["pack"], cols["pack_offset"], strict=True)):
        if pack is None and off is None:
            continue
        dig, length = cols["digest"][i], cols["chunk_length"][i]
        if pack is None or off is None or dig is None:
            raise IntegrityError(f"row {i}: pack index entry without pack id, offset or chunk")
        if not _PACK_ID.fullmatch(pack):
            raise IntegrityError(f"row {i}: pack id {pack[:40]!r} is not 32 hex digits")
        if not 0 <= off <= MAX_PACK_OFFSET - length:
            raise IntegrityError(f"row {i}: chunk at pack offset {off} (+{length} bytes) is out of bounds")
        if out.setdefault(dig, (pack, off)) != (pack, off):
            raise IntegrityError(f"chunk {dig.hex()} is listed at two places in the pack index")
    return out
