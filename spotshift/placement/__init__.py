"""Placement: topology-aware scoring, migration economics, preemption risk and per-job placement state."""
