"""Idle detection: whether a dev environment was active since the previous sample (CPU of its process
group, the heartbeat file, the requests counter), and how long it has been idle (virtual clock)."""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from spotshift.clock import as_utc
from spotshift.devenvs.env import DevEnv, get_devenv
from spotshift.devenvs.process import alive, file_mtime, group_cpu_s, requests_served
from spotshift.devenvs.state import (
    devenvs_dir,
    env_lock,
    hours_since,
    load_env_state,
    record_event,
    save_env_state,
)


@dataclass(frozen=True)
class Activity:
    """One sample: what moved since the previous one, and how long the environment has been idle."""

    name: str
    status: str
    active: list[str]
    idle_hours: float
    idle_limit_hours: float

    @property
    def over_limit(self) -> bool:
        return self.status == "running" and self.idle_hours >= self.idle_limit_hours


def sample(doc: dict[str, Any], env: DevEnv, now: datetime) -> Activity:
    """Sample ``env``'s activity into ``doc`` (the caller holds the lock and saves it); an environment
    whose process is gone becomes ``exited``."""
    if doc["status"] not in ("running", "downsized"):
        return Activity(env.name, doc["status"], [], 0.0, env.idle_hours)
    if not alive(doc.get("pid"), doc.get("pid_start")):
        doc["status"] = "exited"
        record_event(doc, now, "exited", pid=doc.get("pid"))
        return Activity(env.name, "exited", [], 0.0, env.idle_hours)
    wall = time.time()
    cpu = group_cpu_s(int(doc["pid"]))
    hb = file_mtime(devenvs_dir() / f"{env.name}.heartbeat")
    req = requests_served(devenvs_dir() / f"{env.name}.requests")
    dt = max(1e-6, wall - float(doc["last_sample_wall"]))
    active = []
    if (cpu - float(doc["last_cpu_s"])) / dt > env.min_cpu_fraction:
        active.append(f"cpu {(cpu - float(doc['last_cpu_s'])) / dt:.2f} cores")
    if hb > float(doc["last_heartbeat_mtime"]):
        active.append("heartbeat")
    if req > int(doc["last_requests"]):
        active.append(f"{req - int(doc['last_requests'])} requests")
    doc.update(last_sample_wall=wall, last_cpu_s=cpu, last_heartbeat_mtime=hb, last_requests=req)
    if active:
        doc["last_active_at"] = as_utc(now).isoformat()
    return Activity(
        env.name, doc["status"], active, max(0.0, hours_since(doc["last_active_at"], now)), env.idle_hours
    )


def observe(name: str, *, now: datetime) -> Activity:
    """Sample the environment's activity (see the module docstring) and keep the sample."""
    env = get_devenv(name)
    with env_lock(name):
        doc = load_env_state(name)
        act = sample(doc, env, now)
        save_env_state(doc)
    return act
