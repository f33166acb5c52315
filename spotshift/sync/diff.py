"""Diff two snapshots by walking their Merkle trees: the files of the source that the target lacks,
and the chunks the target already references (so moved or renamed content is not sent again)."""

from __future__ import annotations

from spotshift.sync.chunking import DIGEST_SIZE
from spotshift.sync.entries import DIR, FILE, ROOT_PATH, FileEntry
from spotshift.sync.manifest import Manifest


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
