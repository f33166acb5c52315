"""Integrations of spotshift sessions with training frameworks (each needs its extra)."""
