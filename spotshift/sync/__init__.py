"""Content-defined chunking, manifests, Merkle trees, chunk stores and delta sync.

Modules (imported lazily by callers; this package imports nothing so the command line stays fast):

``chunking``     chunking engines and parameters (:class:`~spotshift.sync.chunking.ChunkParams`), digests
``fingerprint``  :func:`~spotshift.sync.fingerprint.fingerprint` a directory -> manifest (files cache)
``manifest``     :class:`~spotshift.sync.manifest.Manifest` (Parquet, Merkle root) and :func:`diff`
``filescache``   the (size, mtime, inode) -> chunks cache under ``$SPOTSHIFT_HOME/cache``
``store``        :class:`ChunkStore` and the local store; ``store_s3``, ``store_gcs`` the cloud ones
``store_url``    ``open_store(url)``: the store behind a ``file://``, ``s3://`` or ``gs://`` URL
``refs``         manifests and ``latest`` pointers inside a store
``delta``        ``push``, ``replicate``, ``pull``, ``verify`` (with repair)
``transfer``     :class:`TransferStats` (a ``raw.transfers`` row) and the bounded-memory pool
``datasets``     the dataset registry and the operations the Dagster assets call
``commands``     ``spotshift sync ...`` and ``spotshift datasets ...``
"""
