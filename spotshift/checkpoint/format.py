"""The checkpoint format: encrypted safetensors parts, sealed JSON metadata, a commit marker.

Layout in any :class:`~spotshift.sync.store.ChunkStore` (the local tier is a store too)::

    checkpoints/<job>/<checkpoint_id>/<part>-<ctx>.enc   one encrypted safetensors file per part
    checkpoints/<job>/<checkpoint_id>/meta-<ctx>.json    metadata (plaintext, sealed)
    checkpoints/<job>/<checkpoint_id>/COMMIT             written last, names and authenticates the metadata
    checkpoints/<job>/latest                             pointer to the newest committed checkpoint
    checkpoints/<job>/incoming/<pid>.<id>.<hex>.delta    a migration's tensor delta, until applied
    .tmp/<pid>.<...>                                     a writer's temp files (local stores)

``checkpoint_id`` is ``s<step:010d>-<first 16 hex of the content hash>``: the same training state
has the same id wherever and however often it is written. ``<ctx>`` names one encryption of it
(its fresh data key), so two writers of the same id never mix their parts: ``COMMIT`` is
write-once and names the metadata that won; the loser's objects are garbage, never a broken
checkpoint. Parts are plain safetensors files once decrypted (``safetensors.torch.load`` reads
them); usually ``model`` (weights) and ``optim`` (optimizer moments).

The content hash (BLAKE3) covers the job, step, tokens, the JSON training state (RNG states, data
position, configs) and the plaintext hash of every part; timestamps, location and encryption do
not enter it. Metadata fields: see :func:`build_meta`.

``COMMIT`` names the metadata object and carries ``mac``: keyed BLAKE3 over the marker's fields and
the metadata bytes, under a key derived from the checkpoint's data key (so only a holder of the KEK
can write a marker that verifies; nothing in it is an unkeyed hash a forger could recompute).
Markers written before the MAC (``meta_hash``, an unkeyed BLAKE3) are still read: their metadata
seal, checked on every verification, is what authenticates them; a copy gets a keyed marker.

Verification order (:meth:`StoredCheckpoint.verify`): stored sizes (truncation) and stored BLAKE3
hashes (flipped bytes, swapped files) before any decryption; then the data key unwraps under the
expected KEK, the metadata seal, the commit MAC, the content hash against the sealed part hashes,
every segment's GCM tag, and finally the plaintext hashes. Nothing commits a checkpoint it has not
verified this way: writers produce it, :func:`~spotshift.checkpoint.tiered.copy_checkpoint`
verifies before copying, migration deltas verify both ends (:mod:`spotshift.checkpoint.migrate`),
and a resume takes the newest checkpoint that verifies (:func:`open_newest_verified`).

Code: :mod:`.codec` (ids, tensors as safetensors bytes, hashes, the payload), :mod:`.writer`
(staging, encryption, commit), :mod:`.reader` (one checkpoint's checks), :mod:`.catalog` (listing,
the ``latest`` pointer, the newest verified checkpoint, dead writers' leftovers) and
:mod:`.sharded` (one checkpoint written by the ranks of a multi-process job). This module
re-exports their public names: ``from spotshift.checkpoint.format import ...`` is the one import
callers use.

Garbage of killed writers (temp files, undelivered deltas) is named after the writer's pid; every
checkpoint writer removes what dead writers left in the store it writes to (:func:`sweep_dead_writers`)
and ``spotshift ckpt list`` reports it (:func:`leftovers`).
"""

from __future__ import annotations

from spotshift.checkpoint.catalog import (
    VerifiedCheckpoint,
    latest_checkpoint,
    leftovers,
    list_checkpoints,
    open_checkpoint,
    open_newest_verified,
    parse_checkpoint_path,
    read_latest_pointer,
    sweep_dead_writers,
)
from spotshift.checkpoint.codec import (
    COMMIT_MAC_ALG,
    DTYPE_BYTES,
    FORMAT,
    HASH_ALG,
    INCOMING,
    KINDS,
    CheckpointPayload,
    CheckpointRef,
    canonical_json,
    checkpoint_id_for,
    checkpoint_label,
    checkpoint_prefix,
    commit_mac,
    content_hash_of,
    job_prefix,
    latest_key,
    parse_safetensors,
    part_layout,
    runtime_versions,
    safetensors_header,
    sealed_bytes,
    step_of,
    tensor_view,
    tensors_of,
)
from spotshift.checkpoint.reader import StoredCheckpoint, open_object
from spotshift.checkpoint.writer import build_meta, commit_checkpoint, write_checkpoint

__all__ = [
    "COMMIT_MAC_ALG",
    "DTYPE_BYTES",
    "FORMAT",
    "HASH_ALG",
    "INCOMING",
    "KINDS",
    "CheckpointPayload",
    "CheckpointRef",
    "StoredCheckpoint",
    "VerifiedCheckpoint",
    "build_meta",
    "canonical_json",
    "checkpoint_id_for",
    "checkpoint_label",
    "checkpoint_prefix",
    "commit_checkpoint",
    "commit_mac",
    "content_hash_of",
    "job_prefix",
    "latest_checkpoint",
    "latest_key",
    "leftovers",
    "list_checkpoints",
    "open_checkpoint",
    "open_newest_verified",
    "open_object",
    "parse_checkpoint_path",
    "parse_safetensors",
    "part_layout",
    "read_latest_pointer",
    "runtime_versions",
    "safetensors_header",
    "sealed_bytes",
    "step_of",
    "sweep_dead_writers",
    "tensor_view",
    "tensors_of",
    "write_checkpoint",
]
