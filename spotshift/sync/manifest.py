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
hashes mean equal subtrees: :func:`spotshift.sync.diff.diff` skips them without looking at their files.

The entries themselves, their leaf hashes and their checks as untrusted input are in
:mod:`spotshift.sync.entries`.
"""

from __future__ import annotations

import io
import json
import struct
from array import array
from collections.abc import Iterator
from typing import Any

from spotshift import __version__
from spotshift.errors import IntegrityError
from spotshift.sync.chunking import DIGEST_SIZE, ChunkParams, digest_function
from spotshift.sync.entries import DIR, FILE, ROOT_PATH, SYMLINK, FileEntry, entries_from_columns, leaf_hash
from spotshift.sync.packs import pack_index_from_columns

FORMAT_VERSION = 1
#: the format of manifests with a pack index (see the module docstring)
PACKED_FORMAT_VERSION = 2
READABLE_VERSIONS = (FORMAT_VERSION, PACKED_FORMAT_VERSION)
PACK_COLUMNS = ("pack", "pack_offset")
METADATA_KEY = b"spotshift.manifest"
_KIND_BYTE = {FILE: b"f", DIR: b"d", SYMLINK: b"l"}
COLUMNS = ("path", "kind", "size", "mode", "mtime_ns", "target", "chunk_offset", "chunk_length", "digest")


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
            entries = entries_from_columns(cols)
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
