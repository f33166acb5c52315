"""The router's side of a cutover (:mod:`spotshift.serving.cutover`): split, mirror, measure, analyse.

:class:`CutoverTraffic` is owned by a :class:`~spotshift.serving.router.Router`. Once a second
(:meth:`tick`) it re-reads the endpoint's cutover state; the weights it routes by are one immutable
:class:`Split` replaced by a single assignment, so a request sees either the old weights or the
new ones, never a mix, and a router restarted mid-cutover routes at the persisted weights from its
first request.

* **Split**: a replica is on the *target* side when it runs in the cutover's ``to_location`` (and,
  for a new checkpoint where the source already serves, does not serve the source's checkpoint:
  :func:`spotshift.serving.cutover.side_of`), else on the *source* side. Each request draws its side once (a seeded generator of its own, so the
  router's 80/20 draws are unchanged): target with probability ``target_weight``. The router's
  rule then picks within that side; a side with no usable replica left falls back to the other, so a
  weight change or a lost replica never fails a request. Requests in flight on the target when its
  weight drops to 0 finish there.
* **Mirror**: a request the source answered is, with probability ``mirror_share``, sent again to the
  least-busy target replica in the background. Its answer is compared with the source's (greedy
  decoding: identical text) and its latency and errors counted; it is never returned. A target with
  :data:`MIRROR_MAX_QUEUE` requests per slot already outstanding is skipped (counted, never queued).
* **Windows**: every ``interval_s`` wall seconds the window closes and
  :func:`spotshift.serving.cutover.decide` runs on it under the state lock (a failed criterion sets
  the target's weight to 0 in the same tick). Errors are answers with status 500, 502 or 504; a
  replica lost at the transport level (killed, reset) is counted apart: the router retries the
  request elsewhere and capacity, not the target's answers, is what failed.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from spotshift.clock import virtual_now
from spotshift.errors import SpotshiftError
from spotshift.serving import cutover as co
from spotshift.serving import replica_api as api
from spotshift.serving.cutover_facts import record_stage_rows
from spotshift.serving.policy import ReplicaView

log = logging.getLogger("spotshift.serving")

MIRROR_MAX_QUEUE = 2  # outstanding requests per slot beyond which a mirror is skipped
ERROR_STATUSES = frozenset({500, 502, 504})
SPLIT_SEED_SALT = 0x5EED15


@dataclass(frozen=True)
class Split:
    """The weights one request is routed by (replaced whole on a change)."""

    cutover_id: str
    phase: str
    to_location: str
    target_weight: float
    mirror_share: float
    interval_s: float
    version: int
    source_checkpoints: tuple[str, ...] = ()

    @property
    def measuring(self) -> bool:
        return self.phase in co.ACTIVE_PHASES


class CutoverTraffic:
    """Split, mirror and windows of one endpoint's cutover (module docstring)."""

    def __init__(self, endpoint: str, seed: int = 0, record_rows: bool = False) -> None:
        self.endpoint = endpoint
        self.rng = random.Random(seed ^ SPLIT_SEED_SALT)
        self.split: Split | None = None
        self.window: co.Window | None = None
        self.record_rows = record_rows
        self.mirrors: set[asyncio.Task[Any]] = set()
        self.counts = {"to_target": 0, "to_source": 0, "mirrored": 0, "fallback": 0}
        self._recorded = 0
        self._stamp: tuple[int, int] | None = None
        self.reload()

    # -- state ----------------------------------------------------------------------------------
    def reload(self) -> None:
        """Pick up the persisted state (the router's first call resumes a cutover in progress); the
        file is parsed again only when its modification time or size changed."""
        try:
            stat = co.state_path(self.endpoint).stat()
            stamp: tuple[int, int] | None = (stat.st_mtime_ns, stat.st_size)
        except OSError:
            stamp = None
        if stamp is not None and stamp == self._stamp:
            return
        self._stamp = stamp
        try:
            st = co.load_state(self.endpoint)
        except SpotshiftError as exc:  # a broken file never stops routing: keep the last weights
            log.warning("cutover state not read: %s", exc)
            self._stamp = None
            return
        if st is None:
            self.split = None
            return
        if (
            self.split is not None
            and self.split.version == st.version
            and self.split.cutover_id == st.cutover_id
        ):
            return
        self.split = Split(
            st.cutover_id,
            st.phase,
            st.to_location,
            st.target_weight,
            st.mirror_share,
            st.interval_s,
            st.version,
            tuple(st.source_checkpoints),
        )
        if self.split.measuring and (self.window is None):
            self.window = co.Window(time.monotonic())
        if not self.split.measuring:
            self.window = None
        if self.record_rows and len(st.stage_rows) > self._recorded:
            rows = list(st.stage_rows)
            self._recorded = len(rows)
            threading.Thread(target=_record_rows, args=(rows,), daemon=True).start()

    # -- per request ----------------------------------------------------------------------------
    def side_of(self, replica: ReplicaView) -> str:
        split = self.split
        if split is None:
            return "source"
        return co.side_of(split.to_location, split.source_checkpoints, replica.location, replica.checkpoint)

    def pick(self) -> str | None:
        """The side this request goes to (None: no cutover, route over every replica)."""
        split = self.split
        if split is None:
            return None
        side = "target" if self.rng.random() < split.target_weight else "source"
        self.counts["to_" + side] += 1
        return side

    def restrict(self, usable: Sequence[ReplicaView], side: str | None) -> list[ReplicaView]:
        """The usable replicas of ``side``; every usable one when that side has none ready."""
        if side is None:
            return list(usable)
        mine = [r for r in usable if self.side_of(r) == side]
        if any(r.state == "ready" for r in mine):
            return mine
        self.counts["fallback"] += 1
        return list(usable)

    def observe(self, replica: ReplicaView, status: int | None, ms: float | None, tokens: float) -> None:
        """Count one answer (``status`` None: lost at the transport level) in the open window."""
        w = self.window
        if w is None:
            return
        if status is None:
            w.transport_failures += 1
            return
        if status == api.DRAINING_STATUS:
            return  # a draining replica refused without doing work; the request is retried
        side = w.target if self.side_of(replica) == "target" else w.source
        side.add(ms, status not in ERROR_STATUSES, tokens, replica.cost_per_million_tokens)

    def should_mirror(self, replica: ReplicaView) -> bool:
        split = self.split
        if split is None or split.mirror_share <= 0 or self.side_of(replica) != "source":
            return False
        return self.rng.random() < split.mirror_share

    def spawn_mirror(self, router: Any, body: bytes, user_region: str, tokens: float, answer: bytes) -> None:
        """Send the request to a target replica in the background (never awaited by the caller)."""
        task = asyncio.ensure_future(self._mirror(router, body, user_region, tokens, answer))
        self.mirrors.add(task)
        task.add_done_callback(self.mirrors.discard)

    async def _mirror(self, router: Any, body: bytes, user_region: str, tokens: float, answer: bytes) -> None:
        import httpx

        w = self.window
        if w is None:
            return
        now = time.monotonic()
        targets = [
            r
            for r in router.replicas
            if r.state == "ready"
            and self.side_of(r) == "target"
            and router.set_aside.get(r.replica_id, 0.0) <= now
        ]
        if not targets:
            w.mirror_skipped += 1
            return
        rep = min(targets, key=lambda r: (router.outstanding.get(r.replica_id, 0), r.replica_id))
        if router.outstanding.get(rep.replica_id, 0) >= rep.slots * MIRROR_MAX_QUEUE:
            w.mirror_skipped += 1
            return
        rid = rep.replica_id
        router.outstanding[rid] = router.outstanding.get(rid, 0) + 1
        t0 = time.perf_counter()
        try:
            resp = await router.post_completion(rep, body, user_region)
        except httpx.TransportError:
            self.observe(rep, None, None, tokens)
            return
        finally:
            router.outstanding[rid] -= 1
        ms = (time.perf_counter() - t0) * 1000.0
        if self.window is not w:
            return  # the window closed (or the cutover ended) meanwhile
        self.observe(rep, resp.status_code, ms, tokens)
        if resp.status_code != 200:
            return
        self.counts["mirrored"] += 1
        w.mirrored += 1
        a, b = _text(answer), _text(resp.content)
        if a is not None and a == b:
            w.agreed += 1
        elif not w.first_mismatch:
            w.first_mismatch = f"source {a!r:.40} vs target {b!r:.40}"

    # -- periodic -------------------------------------------------------------------------------
    def tick(self) -> None:
        """Re-read the state; close the window when ``interval_s`` has passed and decide on it."""
        self.reload()
        split, w = self.split, self.window
        if split is None or w is None or not split.measuring:
            return
        now = time.monotonic()
        if now - w.started < split.interval_s:
            return
        w.ended = now
        self.window = co.Window(now)
        cid = split.cutover_id

        def change(st: co.CutoverState) -> co.CutoverState | None:
            if st.cutover_id != cid or not st.active:
                return None
            return co.decide(st, w, virtual_now())

        try:
            co.update_state(self.endpoint, change)
        except SpotshiftError as exc:
            log.warning("cutover window not analysed: %s", exc)
        self.reload()


def _text(content: bytes) -> str | None:
    try:
        return json.loads(content)["choices"][0]["text"]
    except (ValueError, KeyError, IndexError, TypeError):
        return None


def _record_rows(rows: list[dict[str, Any]]) -> None:
    try:
        record_stage_rows(rows)
    except SpotshiftError as exc:  # the rows stay in the state file; cutover status records them
        log.warning("raw.cutovers not recorded: %s", exc)
