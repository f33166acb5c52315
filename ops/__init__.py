"""Ops and op jobs for imperative actions (emergency checkpoint, cutover, rollback). Each module exposes ``defs``."""
