"""Content-defined chunking, manifests, Merkle trees, chunk stores and delta sync."""
