"""Content-defined chunking, manifests, Merkle trees, chunk stores and delta sync.

Modules (imported lazily by callers; this package imports nothing so the command line stays fast):

``chunking``     chunking engines and parameters (:class:`~spotshift.sync.chunking.ChunkParams`), digests
``fingerprint``  :func:`~spotshift.sync.fingerprint.fingerprint` a directory -> manifest (files cache)
``manifest``     :class:`~spotshift.sync.manifest.Manifest` (Parquet, Merkle root)
``entries``      :class:`~spotshift.sync.entries.FileEntry`, leaf hashes, checks of untrusted entries
``diff``         :func:`~spotshift.sync.diff.diff` two snapshots by their Merkle trees
``filescache``   the (size, mtime, inode) -> chunks cache under ``$SPOTSHIFT_HOME/cache``
``store``        :class:`ChunkStore` and the local store; ``store_s3``, ``store_gcs`` the cloud ones
``store_url``    ``open_store(url)``: the store behind a ``file://``, ``s3://`` or ``gs://`` URL
``refs``         manifests and ``latest`` pointers inside a store
``delta``        the steps every transfer shares: plan what the target lacks, send, commit
``archiver``     ``push`` a directory into a store
``replicator``   ``replicate`` a snapshot between stores
``restorer``     ``pull`` a snapshot into a directory
``checker``      ``verify`` a store (with repair)
``transfer``     :class:`TransferStats` (a ``raw.transfers`` row) and the bounded-memory pool
``datasets``     the dataset registry and the operations the Dagster assets call
``commands``     ``spotshift sync ...`` and ``spotshift datasets ...``
"""
