"""Running, watching, hibernating and resuming dev/test environments.

State: one JSON document per environment, ``$SPOTSHIFT_HOME/devenvs/<name>.json`` (atomic rewrite
under a lock): status (``running`` | ``hibernated`` | ``downsized`` | ``exited``), the process (pid
and its kernel start time, so a reused pid is never mistaken for it), where it runs and at what
price, the last activity, the workspace snapshot, and an append-only event list.

Activity (:func:`observe`): a sample counts as activity when, since the previous sample, the
process group used more than ``min_cpu_fraction`` of a core, or the heartbeat file
(``$SPOTSHIFT_DEVENV_HEARTBEAT``, given to the process) was touched, or the requests counter
(``$SPOTSHIFT_DEVENV_REQUESTS``, a file holding the number of requests served) went up. Idle time is
virtual-clock time since the last activity.

Hibernation never loses a byte: the workspace is pushed to the region's store (delta: only chunks
the store lacks), the snapshot is verified there (root and every chunk), and only then is the
process stopped for good and the workspace released. Resume pulls the snapshot (every chunk checked
against its digest), checks the restored tree's root against the snapshot's, and starts the process.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from spotshift import warehouse
from spotshift.atomic import atomic_write_json
from spotshift.clock import as_utc, parse_utc
from spotshift.devenvs.env import DevEnv, get_devenv, load_devenvs
from spotshift.errors import ConfigError, IntegrityError
from spotshift.home import spotshift_home
from spotshift.jsondoc import parse_json
from spotshift.placement.inputs import latest_snapshot, load_quotes
from spotshift.pricing.catalog import gpu_model_matches
from spotshift.registry import locked
from spotshift.sync.archiver import push
from spotshift.sync.datasets import check_replica
from spotshift.sync.fingerprint import fingerprint
from spotshift.sync.replicator import replicate
from spotshift.sync.restorer import pull
from spotshift.sync.store_url import open_store
from spotshift.training.runs import store_url_for

HEARTBEAT_ENV = "SPOTSHIFT_DEVENV_HEARTBEAT"
REQUESTS_ENV = "SPOTSHIFT_DEVENV_REQUESTS"
STOP_TIMEOUT_S = 10.0
_CHILDREN: dict[int, subprocess.Popen[bytes]] = {}  # processes this process started (reaped here)


def _dir() -> Path:
    return spotshift_home() / "devenvs"


def state_path(name: str) -> Path:
    return _dir() / f"{name}.json"


def load_env_state(name: str) -> dict[str, Any]:
    """The environment's state document (status ``declared`` when it never started)."""
    path = state_path(name)
    if not path.exists():
        return {"name": name, "status": "declared", "events": []}
    doc = parse_json(path.read_bytes(), f"devenv state {path}")
    if not isinstance(doc, dict) or not isinstance(doc.get("events"), list):
        raise ConfigError(f"devenv state {path}: not a devenv state document")
    return doc


def _save(doc: dict[str, Any]) -> None:
    _dir().mkdir(parents=True, exist_ok=True)
    atomic_write_json(state_path(doc["name"]), doc)


def _event(doc: dict[str, Any], now: datetime, event: str, **detail: Any) -> None:
    doc["events"].append({"at": as_utc(now).isoformat(), "event": event, **detail})


def _hours(a: str, b: datetime) -> float:
    return (as_utc(b) - parse_utc(a)).total_seconds() / 3600.0


# --- where it runs ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Place:
    """Where an environment runs and what it pays there."""

    location: str
    instance_type: str
    usd_hour: float


def cheapest_place(env: DevEnv, *, pinned: bool = True) -> Place:
    """The cheapest on-demand offer of the latest quote snapshot with the environment's GPU model and
    count in an allowed location (``pinned``: only its declared location, when it has one). No
    quotes: the declared location at an unknown price (0), else :class:`ConfigError`."""
    import fnmatch

    quotes: list[Any] = []
    try:
        with warehouse.connect() as con:
            snap = latest_snapshot(con)
            if snap is not None:
                quotes = load_quotes(con, snap[0])
    except Exception:  # noqa: BLE001 - no warehouse yet: no prices
        quotes = []
    ok = [
        q
        for q in quotes
        if q.market == "on_demand"
        and q.gpu_count == env.gpu_count
        and gpu_model_matches(env.gpu_model, q.gpu_model)
        and any(fnmatch.fnmatchcase(q.location, p) for p in env.allowed_locations)
        and (not pinned or not env.location or q.location == env.location)
    ]
    if ok:
        best = min(ok, key=lambda q: (q.price_usd_hour, q.location, q.instance_type))
        return Place(best.location, best.instance_type, best.price_usd_hour)
    if env.location:
        return Place(env.location, "", 0.0)
    raise ConfigError(
        f"devenv {env.name!r}: no on-demand offer of {env.gpu_count}x {env.gpu_model} in the latest prices "
        "and no --location declared"
    )


# --- the process -----------------------------------------------------------------------------------

_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def _stat(pid: int) -> list[str] | None:
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return raw[raw.rindex(")") + 2 :].split()


def _alive(pid: int | None, start: str | None) -> bool:
    if not pid:
        return False
    child = _CHILDREN.get(pid)
    if child is not None and child.poll() is not None:
        return False
    st = _stat(pid)
    if st is None or st[0] == "Z":
        return False
    return start is None or st[19] == start


def _group_cpu_s(pgid: int) -> float:
    total = 0
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        st = _stat(int(entry))
        if st is not None and st[2] == str(pgid):
            total += int(st[11]) + int(st[12])
    return total / _TICKS


def _spawn(env: DevEnv, *, gpus: bool, log: Path) -> tuple[int, str]:
    heartbeat = _dir() / f"{env.name}.heartbeat"
    requests = _dir() / f"{env.name}.requests"
    child_env = {**os.environ, HEARTBEAT_ENV: str(heartbeat), REQUESTS_ENV: str(requests)}
    if not gpus:
        child_env["CUDA_VISIBLE_DEVICES"] = ""  # the cpu policy: the same command without GPUs
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "ab") as out:
        proc = subprocess.Popen(  # noqa: S602 - the user's own declared command, run as they would
            env.command,
            shell=True,
            cwd=env.workspace,
            env=child_env,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    _CHILDREN[proc.pid] = proc
    st = _stat(proc.pid)
    return proc.pid, st[19] if st else ""


def _stop(pid: int | None, start: str | None) -> None:
    """SIGTERM the process group, SIGKILL it after :data:`STOP_TIMEOUT_S`."""
    if not _alive(pid, start):
        return
    assert pid is not None
    for sig, wait_s in ((signal.SIGTERM, STOP_TIMEOUT_S), (signal.SIGKILL, STOP_TIMEOUT_S)):
        try:
            os.killpg(pid, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline:
            if not _alive(pid, start):
                _CHILDREN.pop(pid, None)
                return
            time.sleep(0.05)
    raise ConfigError(f"devenv process {pid} did not stop")


def _locked(name: str) -> Any:
    _dir().mkdir(parents=True, exist_ok=True)
    return locked(state_path(name))


def start(name: str, *, now: datetime) -> dict[str, Any]:
    """Start the environment's process in its place (declared location, else the cheapest suitable).
    Refused when it is already running, or hibernated (``resume`` it)."""
    env = get_devenv(name)
    with _locked(name):
        doc = load_env_state(name)
        if doc["status"] in ("running", "downsized") and _alive(doc.get("pid"), doc.get("pid_start")):
            raise ConfigError(f"devenv {name!r} is already {doc['status']} (pid {doc['pid']})")
        if doc["status"] == "hibernated":
            raise ConfigError(f"devenv {name!r} is hibernated: `spotshift devenvs resume {name}`")
        place = cheapest_place(env)
        _run(doc, env, place, now, gpus=True)
        _event(doc, now, "started", location=place.location, usd_hour=place.usd_hour)
        _save(doc)
    return doc


def _run(doc: dict[str, Any], env: DevEnv, place: Place, now: datetime, *, gpus: bool) -> None:
    pid, pid_start = _spawn(env, gpus=gpus, log=_dir() / f"{env.name}.log")
    doc.update(
        status="running" if gpus else "downsized",
        pid=pid,
        pid_start=pid_start,
        location=place.location,
        instance_type=place.instance_type if gpus else "cpu",
        usd_hour=place.usd_hour if gpus else env.cpu_usd_per_hour,
        gpu_usd_hour=place.usd_hour,
        started_at=as_utc(now).isoformat(),
        last_active_at=as_utc(now).isoformat(),
        last_sample_wall=time.time(),
        last_cpu_s=_group_cpu_s(pid),
        last_heartbeat_mtime=_mtime(_dir() / f"{env.name}.heartbeat"),
        last_requests=_requests(_dir() / f"{env.name}.requests"),
    )


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:
        return 0.0


def _requests(path: Path) -> int:
    try:
        return int(path.read_text().strip() or 0)
    except (OSError, ValueError):
        return 0


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


def _observe(doc: dict[str, Any], env: DevEnv, now: datetime) -> Activity:
    if doc["status"] not in ("running", "downsized"):
        return Activity(env.name, doc["status"], [], 0.0, env.idle_hours)
    if not _alive(doc.get("pid"), doc.get("pid_start")):
        doc["status"] = "exited"
        _event(doc, now, "exited", pid=doc.get("pid"))
        return Activity(env.name, "exited", [], 0.0, env.idle_hours)
    wall = time.time()
    cpu = _group_cpu_s(int(doc["pid"]))
    hb = _mtime(_dir() / f"{env.name}.heartbeat")
    req = _requests(_dir() / f"{env.name}.requests")
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
        env.name, doc["status"], active, max(0.0, _hours(doc["last_active_at"], now)), env.idle_hours
    )


def observe(name: str, *, now: datetime) -> Activity:
    """Sample the environment's activity (see the module docstring) and keep the sample."""
    env = get_devenv(name)
    with _locked(name):
        doc = load_env_state(name)
        act = _observe(doc, env, now)
        _save(doc)
    return act


# --- hibernate / downsize / resume -------------------------------------------------------------------


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
    with _locked(name):
        doc = load_env_state(name)
        if doc["status"] not in ("running", "downsized", "exited"):
            raise ConfigError(f"devenv {name!r} is {doc['status']}: nothing to hibernate")
        _stop(doc.get("pid"), doc.get("pid_start"))
        snap = _snapshot(env, doc["location"])
        shutil.rmtree(env.workspace)  # only now: the snapshot is committed and verified
        doc.update(
            status="hibernated",
            pid=None,
            pid_start=None,
            snapshot=snap,
            hibernated_at=as_utc(now).isoformat(),
        )
        _event(
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
        _save(doc)
    return doc


def downsize(name: str, *, now: datetime, reason: str = "by hand") -> dict[str, Any]:
    """The ``cpu`` policy: snapshot the workspace (verified), restart the process without GPUs on a
    CPU instance (``cpu_usd_per_hour``); the workspace stays."""
    env = get_devenv(name)
    with _locked(name):
        doc = load_env_state(name)
        if doc["status"] != "running":
            raise ConfigError(f"devenv {name!r} is {doc['status']}: only a running environment is downsized")
        _stop(doc.get("pid"), doc.get("pid_start"))
        snap = _snapshot(env, doc["location"])
        gpu_price = float(doc.get("gpu_usd_hour", 0.0))
        _run(doc, env, Place(doc["location"], doc.get("instance_type", ""), gpu_price), now, gpus=False)
        doc.update(snapshot=snap, hibernated_at=as_utc(now).isoformat())
        _event(
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
        _save(doc)
    return doc


def resume(name: str, *, now: datetime) -> dict[str, Any]:
    """Bring a hibernated or downsized environment back in one step, in the cheapest suitable place:
    the workspace restored byte for byte from its snapshot (replicated there first when the place
    is another region), checked against the snapshot's root, and the process started on GPUs."""
    env = get_devenv(name)
    with _locked(name):
        doc = load_env_state(name)
        if doc["status"] not in ("hibernated", "downsized"):
            raise ConfigError(
                f"devenv {name!r} is {doc['status']}: only a hibernated or downsized one resumes"
            )
        place = cheapest_place(env, pinned=False)
        snap = doc["snapshot"]
        moved = 0
        if doc["status"] == "downsized":
            _stop(doc.get("pid"), doc.get("pid_start"))
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
        paused_h = max(0.0, _hours(doc["hibernated_at"], now))
        _run(doc, env, place, now, gpus=True)
        _event(
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
        _save(doc)
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
    h = max(0.0, _hours(ev["at"], until))
    gpus = int(ev.get("gpu_count", 1))
    price = float(ev.get("gpu_usd_hour", 0.0)) - float(ev.get("cpu_usd_hour", 0.0))
    return h, h * gpus, h * max(0.0, price)
