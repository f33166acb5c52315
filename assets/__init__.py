"""Software-defined assets, one module per domain noun. Each module exposes ``defs``."""
