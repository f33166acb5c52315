"""Market and preemption replay, and the policy comparison behind ``spotshift simulate``."""
