"""How many threads one sync operation may use: a leaf module, so that fingerprinting (which starts
with every `spotshift sync fingerprint`) does not import the transfer and pricing code."""

from __future__ import annotations

from spotshift.errors import check_range

#: most parallel transfers or chunking threads one operation may ask for
MAX_WORKERS = 1024


def check_workers(workers: int | None, default: int) -> int:
    """``workers`` when it is a whole number within 1-1024, ``default`` when None; else
    :class:`~spotshift.errors.ConfigError` (``--workers 0`` or ``-3`` is a mistake, not "default")."""
    if workers is None:
        return default
    return int(check_range(workers, "--workers", low=0, high=MAX_WORKERS, integer=True))
