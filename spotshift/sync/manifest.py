"""Manifests: one immutable snapshot of a directory tree, named by its Merkle root.

A manifest lists every entry of the tree — directories, regular files, symlinks (recorded, never
followed) — with size, permission bits and mtime (ns), and for files their chunks in order
(offset, length, 128-bit digest). It is stored as a Parquet table, one row per chunk (files with
no chunks — empty files — and non-files get one row with null chunk columns)::

    path  kind  size  mode  mtime_ns  target  chunk_offset  chunk_length  digest  [pack  pack_offset]

with the chunking parameters, root and totals in the Parquet key-value metadata under
``spotshift.manifest``. Format 2 adds the pack index (``pack``, ``pack_offset``): for a chunk
stored inside a pack file of this store (:mod:`spotshift.sync.packs`), the pack's id and the
chunk's offset in it; null for a chunk stored as its own object. Format 1 manifests (no pack
columns) stay readable, and a manifest with no packed chunk is still written as format 1.

The pack index says where bytes live in one store, not what the snapshot is: it is not part of
the Merkle root (a replica in another store has its own packs and the same root). It is checked
like everything else in an untrusted manifest — ids are 32 hex digits, offsets within bounds,
a chunk listed at one place only — and every chunk read from a pack is checked against its
digest before it is used.

Merkle tree (``H`` = the manifest's digest algorithm, 16 bytes)::

    file     H("spotshift/file\\0" | u64 size | u32 mode | i64 mtime_ns | u32 n | u32 len[n] | digest[n])
    symlink  H("spotshift/link\\0" | u32 mode | i64 mtime_ns | target bytes)
    dir      H("spotshift/dir\\0"  | u32 mode | i64 mtime_ns | for each child by name: u32 len | name | kind | H(child))
    root     H("spotshift/manifest-v1\\0" | chunk parameters key | "\\0" | H(top directory))

The root covers every column, so a manifest whose rows do not hash to the root it is named by has
been truncated or tampered with and is refused (:class:`IntegrityError` naming it). Equal directory
hashes mean equal subtrees: :func:`diff` skips them without looking at their files.
"""

from __future__ import annotations

import io
import json
import struct
import sys
from array import array
from collections.abc import Iterator
from typing import Any

from spotshift.errors import IntegrityError
from spotshift.sync.chunking import DIGEST_SIZE, ChunkParams, digest_function
from spotshift.sync.packs import pack_index_from_columns

FORMAT_VERSION = 1
#: the format of manifests with a pack index (see the module docstring)
PACKED_FORMAT_VERSION = 2
READABLE_VERSIONS = (FORMAT_VERSION, PACKED_FORMAT_VERSION)
PACK_COLUMNS = ("pack", "pack_offset")
METADATA_KEY = b"spotshift.manifest"
FILE, DIR, SYMLINK = "file", "dir", "symlink"
KINDS = (FILE, DIR, SYMLINK)
_KIND_BYTE = {FILE: b"f", DIR: b"d", SYMLINK: b"l"}
ROOT_PATH = "."
COLUMNS = ("path", "kind", "size", "mode", "mtime_ns", "target", "chunk_offset", "chunk_length", "digest")


def _u32_le(values: array) -> bytes:
    if sys.byteorder == "little":
        return values.tobytes()
    swapped = array("I", values)
    swapped.byteswap()
    return swapped.tobytes()


class FileEntry:
    """One entry of a snapshot. ``lengths``/``digests`` are compact (uint32 array, 16 bytes each)."""

    __slots__ = ("path", "kind", "size", "mode", "mtime_ns", "target", "lengths", "digests")

    def __init__(
        self,
        path: str,
        kind: str,
        size: int = 0,
        mode: int = 0o644,
        mtime_ns: int = 0,
        target: str | None = None,
        lengths: array | None = None,
        digests: bytes = b"",
    ):
        self.path = path
        self.kind = kind
        self.size = size
        self.mode = mode
        self.mtime_ns = mtime_ns
        self.target = target
        self.lengths = lengths if lengths is not None else array("I")
        self.digests = digests

    @property
    def name(self) -> str:
        return self.path.rsplit("/", 1)[-1]

    @property
    def parent(self) -> str:
        return self.path.rsplit("/", 1)[0] if "/" in self.path else ROOT_PATH

    @property
    def chunk_count(self) -> int:
        return len(self.lengths)

    def chunks(self) -> Iterator[tuple[int, int, bytes]]:
        """``(offset, length, digest)`` of each chunk, in file order."""
        offset = 0
        d = self.digests
        for i, length in enumerate(self.lengths):
            yield offset, length, d[i * DIGEST_SIZE : (i + 1) * DIGEST_SIZE]
            offset += length

    def __repr__(self) -> str:
        return f"FileEntry({self.path!r}, {self.kind}, size={self.size}, chunks={self.chunk_count})"


def _validity(flags: list[bool]) -> bytes | None:
    if all(flags):
        return None
    bits = bytearray((len(flags) + 7) // 8)
    for i, ok in enumerate(flags):
        if ok:
            bits[i >> 3] |= 1 << (i & 7)
    return bytes(bits)


def _fixed(arrow_type: Any, rows: int, values: Any, valid: bytes | None = None) -> Any:
    import pyarrow as pa

    data = values if isinstance(values, bytes) else values.tobytes()
    nulls = None if valid is None else pa.py_buffer(valid)
    return pa.Array.from_buffers(arrow_type, rows, [nulls, pa.py_buffer(data)])


def _strings(values: list[bytes | None]) -> Any:
    import pyarrow as pa

    offsets = array("q", [0])
    pos = 0
    for v in values:
        pos += len(v) if v is not None else 0
        offsets.append(pos)
    valid = _validity([v is not None for v in values])
    nulls = None if valid is None else pa.py_buffer(valid)
    data = b"".join(v for v in values if v is not None)
    return pa.Array.from_buffers(
        pa.large_string(), len(values), [nulls, pa.py_buffer(offsets.tobytes()), pa.py_buffer(data)]
    )


def leaf_hash(entry: FileEntry, h: Any) -> bytes:
    """Merkle hash of a file or symlink entry (see module docstring)."""
    if entry.kind == FILE:
        head = struct.pack("<QIqI", entry.size, entry.mode, entry.mtime_ns, len(entry.lengths))
        return h(b"spotshift/file\0" + head + _u32_le(entry.lengths) + entry.digests)
    if entry.kind == SYMLINK:
        target = (entry.target or "").encode("utf-8", "surrogateescape")
        return h(b"spotshift/link\0" + struct.pack("<Iq", entry.mode, entry.mtime_ns) + target)
    raise ValueError(f"{entry.kind} has no leaf hash")


class Manifest:
    """A snapshot: entries sorted by path (the top directory is ``"."``), its parameters and hashes.

    Building one checks the tree's shape (every entry has a parent directory entry) and computes
    every node's Merkle hash; :class:`IntegrityError` when the shape is broken.
    """

    def __init__(
        self,
        params: ChunkParams,
        entries: list[FileEntry],
        locations: dict[bytes, tuple[str, int]] | None = None,
    ):
        self.params = params
        self.entries = entries
        #: the pack index: digest -> (pack id, offset) of chunks stored in pack files of its store
        self.locations: dict[bytes, tuple[str, int]] = locations if locations is not None else {}
        self.entries.sort(key=lambda e: e.path)
        self._by_path = {e.path: e for e in self.entries}
        if ROOT_PATH not in self._by_path:
            raise IntegrityError("manifest has no top directory entry '.'")
        if self._by_path[ROOT_PATH].kind != DIR:
            raise IntegrityError("manifest top entry '.' is not a directory")
        children: dict[str, list[str]] = {p: [] for p, e in self._by_path.items() if e.kind == DIR}
        for e in self.entries:
            if e.path == ROOT_PATH:
                continue
            parent = e.parent
            if parent not in children:
                raise IntegrityError(f"manifest entry {e.path!r} has no parent directory entry")
            children[parent].append(e.path)
        for names in children.values():
            names.sort(key=lambda p: p.rsplit("/", 1)[-1].encode("utf-8", "surrogateescape"))
        self._children = children
        self._compute_hashes()

    def _compute_hashes(self) -> None:
        h = digest_function(self.params.digest)
        hashes: dict[str, bytes] = {}
        for e in self.entries:
            if e.kind != DIR:
                hashes[e.path] = leaf_hash(e, h)
        # deepest directories first, so every child hash exists when its parent is hashed
        dirs = sorted(self._children, key=lambda p: (-(p.count("/") + (p != ROOT_PATH)), p))
        for d in dirs:
            e = self._by_path[d]
            parts = [b"spotshift/dir\0", struct.pack("<Iq", e.mode, e.mtime_ns)]
            for child in self._children[d]:
                name = child.rsplit("/", 1)[-1].encode("utf-8", "surrogateescape")
                parts.append(struct.pack("<I", len(name)) + name + _KIND_BYTE[self._by_path[child].kind])
                parts.append(hashes[child])
            hashes[d] = h(b"".join(parts))
        self._hashes = hashes
        top = hashes[ROOT_PATH]
        self._root = h(b"spotshift/manifest-v1\0" + self.params.key.encode() + b"\0" + top).hex()

    def with_locations(self, locations: dict[bytes, tuple[str, int]]) -> Manifest:
        """The same snapshot (same entries, hashes and root) with another store's pack index."""
        import copy

        other = copy.copy(self)
        other.locations = locations
        return other

    # ---- queries -------------------------------------------------------------------------------
    @property
    def root(self) -> str:
        """Hex Merkle root: the manifest's name."""
        return self._root

    def node_hash(self, path: str) -> bytes | None:
        return self._hashes.get(path)

    def get(self, path: str) -> FileEntry | None:
        return self._by_path.get(path)

    def children(self, path: str) -> list[FileEntry]:
        return [self._by_path[p] for p in self._children.get(path, [])]

    def files(self) -> Iterator[FileEntry]:
        return (e for e in self.entries if e.kind == FILE)

    @property
    def total_bytes(self) -> int:
        return sum(e.size for e in self.entries if e.kind == FILE)

    @property
    def file_count(self) -> int:
        return sum(1 for e in self.entries if e.kind == FILE)

    @property
    def chunk_count(self) -> int:
        return sum(e.chunk_count for e in self.entries if e.kind == FILE)

    def unique_chunks(self) -> dict[bytes, int]:
        """digest -> length of every distinct chunk."""
        out: dict[bytes, int] = {}
        for e in self.files():
            for _, length, d in e.chunks():
                out[d] = length
        return out

    def summary(self) -> dict[str, Any]:
        uniq = self.unique_chunks()
        return {
            "root": self.root,
            "files": self.file_count,
            "bytes": self.total_bytes,
            "chunks": self.chunk_count,
            "unique_chunks": len(uniq),
            "unique_bytes": sum(uniq.values()),
            "params": self.params.to_dict(),
        }

    # ---- Parquet -------------------------------------------------------------------------------
    def to_parquet_bytes(self) -> bytes:
        """The manifest as Parquet bytes (zstd-compressed; digests as fixed_size_binary(16)).

        Columns are assembled from raw buffers: ``pa.array`` on Python lists would import pandas
        (~0.15 s), which the timed command line cannot afford.
        """
        import pyarrow as pa
        import pyarrow.parquet as pq

        paths: list[bytes] = []
        kinds: list[bytes] = []
        sizes, modes, mtimes = array("q"), array("i"), array("q")
        targets: list[bytes | None] = []
        offsets, lengths = array("q"), array("q")
        has_chunk: list[bool] = []
        digests: list[bytes] = []
        packs: list[bytes | None] = []
        pack_offsets = array("q")
        in_pack: list[bool] = []
        locs = self.locations
        for e in self.entries:
            p = e.path.encode("utf-8", "surrogateescape")
            k = e.kind.encode()
            t = e.target.encode("utf-8", "surrogateescape") if e.target is not None else None
            n = max(1, e.chunk_count)
            paths.extend([p] * n)
            kinds.extend([k] * n)
            sizes.extend([e.size] * n)
            modes.extend([e.mode] * n)
            mtimes.extend([e.mtime_ns] * n)
            targets.extend([t] * n)
            if e.chunk_count:
                for off, length, dig in e.chunks():
                    offsets.append(off)
                    lengths.append(length)
                    loc = locs.get(dig) if locs else None
                    packs.append(loc[0].encode() if loc else None)
                    pack_offsets.append(loc[1] if loc else 0)
                    in_pack.append(loc is not None)
                has_chunk.extend([True] * e.chunk_count)
                digests.append(e.digests)
            else:
                offsets.append(0)
                lengths.append(0)
                has_chunk.append(False)
                digests.append(bytes(DIGEST_SIZE))
                packs.append(None)
                pack_offsets.append(0)
                in_pack.append(False)
        rows = len(paths)
        chunk_valid = _validity(has_chunk)
        columns = [
            _strings(paths),
            _strings(kinds),
            _fixed(pa.int64(), rows, sizes),
            _fixed(pa.int32(), rows, modes),
            _fixed(pa.int64(), rows, mtimes),
            _strings(targets),
            _fixed(pa.int64(), rows, offsets, chunk_valid),
            _fixed(pa.int64(), rows, lengths, chunk_valid),
            _fixed(pa.binary(DIGEST_SIZE), rows, b"".join(digests), chunk_valid),
        ]
        names = list(COLUMNS)
        if any(in_pack):
            columns += [_strings(packs), _fixed(pa.int64(), rows, pack_offsets, _validity(in_pack))]
            names += PACK_COLUMNS
        schema = pa.schema(
            [(name, col.type) for name, col in zip(names, columns, strict=True)],
            metadata={METADATA_KEY: json.dumps(self._metadata(), sort_keys=True).encode()},
        )
        table = pa.Table.from_arrays(columns, schema=schema)
        sink = io.BytesIO()
        pq.write_table(table, sink, compression="zstd")
        return sink.getvalue()

    def _metadata(self) -> dict[str, Any]:
        from spotshift import __version__

        packed = bool(self.locations) and any(d in self.locations for d in self.unique_chunks())
        return {
            "version": PACKED_FORMAT_VERSION if packed else FORMAT_VERSION,
            "root": self.root,
            "params": self.params.to_dict(),
            "files": self.file_count,
            "bytes": self.total_bytes,
            "chunks": self.chunk_count,
            "writer": f"spotshift {__version__}",
        }

    @classmethod
    def from_parquet_bytes(cls, data: bytes, *, name: str, expected_root: str | None = None) -> Manifest:
        """Parse and verify a manifest; ``name`` is what errors call it (e.g. its store key and URL).

        Refuses (:class:`IntegrityError`) bytes that are not a complete Parquet file, rows that break
        the format, unsafe paths, and content whose Merkle root differs from ``expected_root`` or
        from the root recorded in its metadata.
        """
        import pyarrow as pa
        import pyarrow.parquet as pq

        try:
            # ParquetFile: read_table would import pandas. No thread pools: they can abort the process at exit
            # (apache/arrow#34314).
            table = pq.ParquetFile(io.BytesIO(data), pre_buffer=False).read(use_threads=False)
        except (pa.ArrowException, OSError, ValueError) as exc:
            raise IntegrityError(f"manifest {name} is truncated or not a Parquet file ({exc})") from None
        meta_raw = (table.schema.metadata or {}).get(METADATA_KEY)
        try:
            meta = json.loads(meta_raw) if meta_raw else None
            params = ChunkParams(**meta["params"])  # type: ignore[index]
        except Exception:
            raise IntegrityError(f"manifest {name} has no valid spotshift.manifest metadata") from None
        version = meta.get("version")
        if version not in READABLE_VERSIONS:
            raise IntegrityError(f"manifest {name} has format version {version}, expected 1 or 2")
        try:
            cols = table.to_pydict()
            if (version == PACKED_FORMAT_VERSION) != all(c in cols for c in PACK_COLUMNS):
                raise IntegrityError(f"format {version} {'needs' if version == 2 else 'has no'} pack columns")
            entries = _entries_from_columns(cols)
            locations = None
            if version == PACKED_FORMAT_VERSION:
                locations = pack_index_from_columns(cols)
            manifest = cls(params, entries, locations)
        except IntegrityError as exc:
            raise IntegrityError(f"manifest {name} is malformed: {exc}") from None
        except (KeyError, TypeError, ValueError, OverflowError, struct.error) as exc:
            raise IntegrityError(f"manifest {name} is malformed ({type(exc).__name__})") from None
        for want, what in ((expected_root, "its name"), (meta.get("root"), "its metadata")):
            if want and manifest.root != want:
                raise IntegrityError(
                    f"manifest {name} is tampered: its content hashes to {manifest.root}, not the root {want} of {what}"
                )
        return manifest


def _entries_from_columns(cols: dict[str, list[Any]]) -> list[FileEntry]:
    entries: list[FileEntry] = []
    cur: FileEntry | None = None
    dig_parts: list[bytes] = []
    n = len(cols["path"])
    for i in range(n):
        path = cols["path"][i]
        if cur is None or path != cur.path:
            if cur is not None:
                _finish(cur, dig_parts)
            if path in ("", None):
                raise IntegrityError(f"row {i} has an empty path")
            _check_path(path)
            kind = cols["kind"][i]
            if kind not in KINDS:
                raise IntegrityError(f"{path}: unknown kind {kind!r}")
            cur = FileEntry(
                path,
                kind,
                int(cols["size"][i]),
                int(cols["mode"][i]),
                int(cols["mtime_ns"][i]),
                cols["target"][i],
            )
            _check_entry(cur)
            entries.append(cur)
            dig_parts = []
        off, length, dig = cols["chunk_offset"][i], cols["chunk_length"][i], cols["digest"][i]
        if off is None:
            continue
        if cur.kind != FILE:
            raise IntegrityError(f"{path}: a {cur.kind} cannot have chunks")
        if off != sum(cur.lengths) or not length or length <= 0 or dig is None or len(dig) != DIGEST_SIZE:
            raise IntegrityError(f"{path}: chunk at offset {off} is out of order or incomplete")
        cur.lengths.append(length)
        dig_parts.append(dig)
    if cur is not None:
        _finish(cur, dig_parts)
    seen: set[str] = set()
    for e in entries:
        if e.path in seen:
            raise IntegrityError(f"{e.path}: listed twice")
        seen.add(e.path)
    # Manifest() then refuses entries whose parent is not a directory entry: a restore never
    # writes through a symlink it created itself
    return entries


#: longest symlink target Linux stores (PATH_MAX including the terminating NUL)
MAX_LINK_TARGET_BYTES = 4095


def _check_entry(e: FileEntry) -> None:
    """Refuse entry fields no file system entry can have (a manifest is untrusted input)."""
    if not 0 <= e.mode <= 0o7777:
        raise IntegrityError(f"{e.path}: mode {e.mode} is not a permission mode (0-0o7777)")
    if e.size < 0:
        raise IntegrityError(f"{e.path}: negative size {e.size}")
    if e.kind == SYMLINK:
        if not e.target:
            raise IntegrityError(f"{e.path}: symlink without target")
        if "\0" in e.target:
            raise IntegrityError(f"{e.path}: symlink target contains a NUL byte")
        if len(e.target.encode("utf-8", "surrogateescape")) > MAX_LINK_TARGET_BYTES:
            raise IntegrityError(f"{e.path}: symlink target longer than {MAX_LINK_TARGET_BYTES} bytes")


def _finish(entry: FileEntry, dig_parts: list[bytes]) -> None:
    entry.digests = b"".join(dig_parts)
    if entry.kind == FILE and sum(entry.lengths) != entry.size:
        raise IntegrityError(f"{entry.path}: chunks cover {sum(entry.lengths)} bytes of {entry.size}")


def _check_path(path: str) -> None:
    if path == ROOT_PATH:
        return
    parts = path.split("/")
    if path.startswith("/") or any(p in ("", ".", "..") for p in parts) or "\0" in path:
        raise IntegrityError(f"unsafe path {path!r}")


class Diff:
    """What differs between a source snapshot and a target snapshot (see :func:`diff`).

    ``target_chunks`` holds the digests the target snapshot references in the subtrees that differ.
    """

    def __init__(self) -> None:
        self.changed_files: list[FileEntry] = []
        self.target_chunks: set[bytes] = set()
        self.dirs_pruned = 0
        self.files_unchanged = 0

    def missing_chunks(self) -> dict[bytes, int]:
        """digest -> length of chunks of changed files that the target snapshot does not reference."""
        out: dict[bytes, int] = {}
        known = self.target_chunks
        for e in self.changed_files:
            for _, length, d in e.chunks():
                if d not in known:
                    out[d] = length
        return out

    @property
    def changed_bytes(self) -> int:
        return sum(e.size for e in self.changed_files)


def diff(src: Manifest, dst: Manifest | None) -> Diff:
    """Files of ``src`` that differ from ``dst``, walking both Merkle trees from the top.

    A directory whose hash is equal on both sides is skipped whole (counted in ``dirs_pruned``).
    Chunks referenced by ``dst`` entries inside differing directories are collected in
    ``target_chunks`` so moved or renamed content is not sent again. Chunking parameters must
    match for chunk digests to be comparable; when they do not, every file counts as changed.
    """
    out = Diff()
    if dst is not None and dst.params != src.params:
        dst = None
    if dst is not None and dst.root == src.root:
        out.dirs_pruned = 1
        out.files_unchanged = src.file_count
        return out

    def add_all_chunks(m: Manifest, entry: FileEntry) -> None:
        if entry.kind == FILE:
            out.target_chunks.update(
                entry.digests[i : i + DIGEST_SIZE] for i in range(0, len(entry.digests), DIGEST_SIZE)
            )
        elif entry.kind == DIR:
            for c in m.children(entry.path):
                add_all_chunks(m, c)

    def add_all_files(entry: FileEntry) -> None:
        if entry.kind == FILE:
            out.changed_files.append(entry)
        elif entry.kind == DIR:
            for c in src.children(entry.path):
                add_all_files(c)

    def walk(path: str) -> None:
        matched: set[str] = set()
        for child in src.children(path):
            other = dst.get(child.path) if dst is not None else None
            if other is not None and other.kind == child.kind:
                if dst.node_hash(child.path) == src.node_hash(child.path):  # type: ignore[union-attr]
                    matched.add(child.path)
                    if child.kind == DIR:
                        out.dirs_pruned += 1
                    elif child.kind == FILE:
                        out.files_unchanged += 1
                    continue
                if child.kind == DIR:
                    walk(child.path)
                    matched.add(child.path)
                    continue
            add_all_files(child)
        if dst is not None:
            for other in dst.children(path):
                if other.path not in matched:
                    add_all_chunks(dst, other)

    if dst is None:
        add_all_files(src.get(ROOT_PATH))  # type: ignore[arg-type]
    else:
        walk(ROOT_PATH)
    return out
