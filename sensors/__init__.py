"""Sensors and schedules. Each module exposes ``defs``."""
