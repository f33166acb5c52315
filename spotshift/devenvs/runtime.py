"""Running, watching, hibernating and resuming dev/test environments.

State: one JSON document per environment (:mod:`spotshift.devenvs.state`; atomic rewrite under
a lock): status (``running`` | ``hibernated`` | ``downsized`` | ``exited``), the process (pid
and its kernel start time, so a reused pid is never mistaken for it), where it runs and at what
price, the last activity, the workspace snapshot, and an append-only event list.

Activity (:func:`spotshift.devenvs.activity.observe`): a sample counts as activity when, since the
previous sample, the process group used more than ``min_cpu_fraction`` of a core, or the heartbeat file
(``$SPOTSHIFT_DEVENV_HEARTBEAT``, given to the process) was touched, or the requests counter
(``$SPOTSHIFT_DEVENV_REQUESTS``, a file holding the number of requests served) went up. Idle time is
virtual-clock time since the last activity.

Hibernation never loses a byte: the workspace is pushed to the region's store (delta: only chunks
the store lacks), the snapshot is verified there (root and every chunk), and only then is the
process stopped for good and the workspace released. Resume pulls the snapshot (every chunk checked
against its digest), checks the restored tree's root against the snapshot's, and starts the process.
"""

from __future__ import annotations

import shutil
from datetime import datetime
from pathlib import Path
from typing import Any

from spotshift.clock import as_utc, parse_utc
from spotshift.devenvs.activity import Activity, observe
from spotshift.devenvs.env import DevEnv, get_devenv, load_devenvs
from spotshift.devenvs.place import Place, cheapest_place
from spotshift.devenvs.process import alive, launch, stop
from spotshift.devenvs.state import env_lock, hours_since, load_env_state, record_event, save_env_state
from spotshift.errors import ConfigError, IntegrityError
from spotshift.sync.archiver import push
from spotshift.sync.datasets import check_replica
from spotshift.sync.fingerprint import fingerprint
from spotshift.sync.replicator import replicate
from spotshift.sync.restorer import pull
from spotshift.sync.store_url import open_store
from spotshift.training.runs import store_url_for


def start(name: str, *, now: datetime) -> dict[str, Any]:
    """Start the environment's process in its place (declared location, else the cheapest suitable).
    Refused when it is already running, or hibernated (``resume`` it)."""
    env = get_devenv(name)
    with env_lock(name):
        doc = load_env_state(name)
        if doc["status"] in ("running", "downsized") and alive(doc.get("pid"), doc.get("pid_start")):
            raise ConfigError(f"devenv {name!r} is already {doc['status']} (pid {doc['pid']})")
        if doc["status"] == "hibernated":
            raise ConfigError(f"devenv {name!r} is hibernated: `spotshift devenvs resume {name}`")
        place = cheapest_place(env)
        launch(doc, env, place, now, gpus=True)
        record_event(doc, now, "started", location=place.location, usd_hour=place.usd_hour)
        save_env_state(doc)
    return doc


def _snapshot(env: DevEnv, location: str) -> dict[str, Any]:
    """Push the workspace to ``location``'s store and verify it there; the snapshot's facts."""
    store = open_store(store_url_for(location))
    stats = push(env.workspace, store, env.store_name, src_location=location, dst_location=location)
    check = check_replica(store, env.store_name, stats.root, full=True)
    if not check.passed:
        raise IntegrityError(
            f"devenv {env.name!r}: snapshot in {store.url} failed its check: {check.problem}"
        )
    return {
        "root": stats.root,
        "location": location,
        "bytes_sent": stats.bytes_sent,
        "bytes_full": stats.bytes_full,
    }


def hibernate(name: str, *, now: datetime, reason: str = "by hand") -> dict[str, Any]:
    """Snapshot the workspace into the region's store (verified), stop the process, release the
    workspace. The environment pays nothing until :func:`resume`."""
    env = get_devenv(name)
    with env_lock(name):
        doc = load_env_state(name)
        if doc["status"] not in ("running", "downsized", "exited"):
            raise ConfigError(f"devenv {name!r} is {doc['status']}: nothing to hibernate")
        stop(doc.get("pid"), doc.get("pid_start"))
        snap = _snapshot(env, doc["location"])
        shutil.rmtree(env.workspace)  # only now: the snapshot is committed and verified
        doc.update(
            status="hibernated",
            pid=None,
            pid_start=None,
            snapshot=snap,
            hibernated_at=as_utc(now).isoformat(),
        )
        record_event(
            doc,
            now,
            "hibernated",
            reason=reason,
            location=doc["location"],
            gpu_usd_hour=doc.get("gpu_usd_hour", 0.0),
            gpu_count=env.gpu_count,
            bytes_sent=snap["bytes_sent"],
            root=snap["root"],
        )
        save_env_state(doc)
    return doc


def downsize(name: str, *, now: datetime, reason: str = "by hand") -> dict[str, Any]:
    """The ``cpu`` policy: snapshot the workspace (verified), restart the process without GPUs on a
    CPU instance (``cpu_usd_per_hour``); the workspace stays."""
    env = get_devenv(name)
    with env_lock(name):
        doc = load_env_state(name)
        if doc["status"] != "running":
            raise ConfigError(f"devenv {name!r} is {doc['status']}: only a running environment is downsized")
        stop(doc.get("pid"), doc.get("pid_start"))
        snap = _snapshot(env, doc["location"])
        gpu_price = float(doc.get("gpu_usd_hour", 0.0))
        launch(doc, env, Place(doc["location"], doc.get("instance_type", ""), gpu_price), now, gpus=False)
        doc.update(snapshot=snap, hibernated_at=as_utc(now).isoformat())
        record_event(
            doc,
            now,
            "downsized",
            reason=reason,
            location=doc["location"],
            gpu_usd_hour=gpu_price,
            cpu_usd_hour=env.cpu_usd_per_hour,
            gpu_count=env.gpu_count,
            root=snap["root"],
        )
        save_env_state(doc)
    return doc


def resume(name: str, *, now: datetime) -> dict[str, Any]:
    """Bring a hibernated or downsized environment back in one step, in the cheapest suitable place:
    the workspace restored byte for byte from its snapshot (replicated there first when the place
    is another region), checked against the snapshot's root, and the process started on GPUs."""
    env = get_devenv(name)
    with env_lock(name):
        doc = load_env_state(name)
        if doc["status"] not in ("hibernated", "downsized"):
            raise ConfigError(
                f"devenv {name!r} is {doc['status']}: only a hibernated or downsized one resumes"
            )
        place = cheapest_place(env, pinned=False)
        snap = doc["snapshot"]
        moved = 0
        if doc["status"] == "downsized":
            stop(doc.get("pid"), doc.get("pid_start"))
        else:
            ws = Path(env.workspace)
            if ws.exists() and any(ws.iterdir()):
                raise ConfigError(
                    f"devenv {name!r}: workspace {ws} exists and is not empty; move it away to resume"
                )
            src = open_store(store_url_for(snap["location"]))
            store = src
            if place.location != snap["location"]:
                store = open_store(store_url_for(place.location))
                stats = replicate(
                    src,
                    store,
                    env.store_name,
                    root=snap["root"],
                    src_location=snap["location"],
                    dst_location=place.location,
                )
                moved = stats.bytes_sent
            pull(store, ws, env.store_name, root=snap["root"])
            restored = fingerprint(ws, None).manifest.root
            if restored != snap["root"]:
                raise IntegrityError(
                    f"devenv {name!r}: restored workspace root {restored} is not the snapshot's {snap['root']}"
                )
        paused_h = max(0.0, hours_since(doc["hibernated_at"], now))
        launch(doc, env, place, now, gpus=True)
        record_event(
            doc,
            now,
            "resumed",
            location=place.location,
            usd_hour=place.usd_hour,
            paused_hours=paused_h,
            bytes_replicated=moved,
            root=snap["root"],
        )
        doc.pop("hibernated_at", None)
        save_env_state(doc)
    return doc


# --- the idle check and the report ------------------------------------------------------------------


def idle_candidates(*, now: datetime) -> list[Activity]:
    """Sample every running environment; those idle past their limit (what the sensor acts on)."""
    out = []
    for env in load_devenvs():
        if load_env_state(env.name)["status"] != "running":
            continue
        act = observe(env.name, now=now)
        if act.over_limit:
            out.append(act)
    return out


def act_on_idle(name: str, *, now: datetime) -> dict[str, Any]:
    """Apply the environment's policy (hibernate, or cpu) when it is idle past its limit; a no-op
    (its state returned) when it is not, or no longer running."""
    act = observe(name, now=now)
    if not act.over_limit:
        return load_env_state(name)
    why = f"idle {act.idle_hours:.2f} h >= {act.idle_limit_hours:g} h"
    env = get_devenv(name)
    return (
        hibernate(name, now=now, reason=why)
        if env.policy == "hibernate"
        else downsize(name, now=now, reason=why)
    )


def waste_report(*, now: datetime) -> dict[str, Any]:
    """Per team: idle GPU-hours not paid and the dollars they would have cost (hibernated: the GPU
    price; downsized: the GPU price less the CPU price), counted from each hibernation or
    downsizing to its resume (or ``now``)."""
    teams: dict[str, dict[str, float]] = {}
    envs: list[dict[str, Any]] = []
    for env in load_devenvs():
        doc = load_env_state(env.name)
        hours = gpu_hours = usd = 0.0
        open_ev: dict[str, Any] | None = None
        for e in doc["events"]:
            if e["event"] in ("hibernated", "downsized"):
                open_ev = e
            elif e["event"] == "resumed" and open_ev is not None:
                h, gh, u = _avoided(open_ev, parse_utc(e["at"]))
                hours, gpu_hours, usd = hours + h, gpu_hours + gh, usd + u
                open_ev = None
        if open_ev is not None:
            h, gh, u = _avoided(open_ev, now)
            hours, gpu_hours, usd = hours + h, gpu_hours + gh, usd + u
        t = teams.setdefault(env.team, {"hours": 0.0, "gpu_hours": 0.0, "usd": 0.0, "environments": 0})
        t["hours"] += hours
        t["gpu_hours"] += gpu_hours
        t["usd"] += usd
        t["environments"] += 1
        envs.append(
            {
                "name": env.name,
                "team": env.team,
                "status": doc["status"],
                "hours": hours,
                "gpu_hours": gpu_hours,
                "usd": usd,
            }
        )
    return {"teams": teams, "environments": envs}


def _avoided(ev: dict[str, Any], until: datetime) -> tuple[float, float, float]:
    h = max(0.0, hours_since(ev["at"], until))
    gpus = int(ev.get("gpu_count", 1))
    price = float(ev.get("gpu_usd_hour", 0.0)) - float(ev.get("cpu_usd_hour", 0.0))
    return h, h * gpus, h * max(0.0, price)
