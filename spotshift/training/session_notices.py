"""The notice half of :class:`spotshift.checkpointing.Session`: signals, watchers, the emergency checkpoint.

A mixin over the attributes ``Session.__init__`` sets. In a multi-process job a notice reaching
any rank stops every rank at the same step (``step_done`` all-reduces the flag) and every rank
takes the notice of the lowest rank that has one, so all of them report the same notice.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import threading
import time
from datetime import timedelta
from typing import Any

from spotshift.clock import virtual_now
from spotshift.errors import SpotshiftError
from spotshift.training.preemption import (
    PreemptionNotice,
    WatcherThread,
    build_watchers,
    utc_now,
    watcher_urls_for,
)
from spotshift.training.session_state import notice_from_dict, read_notice_file
from spotshift.training.trainer_record import record_preemption

log = logging.getLogger("spotshift.session")


class SessionNotices:
    """Notices and the emergency checkpoint for a Session (see the module doc)."""

    req: Any
    ranks: Any
    rank: int
    controller: Any

    def _install_signals(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return  # signals are the main thread's; notices still arrive through notice.json
        for sig in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(ValueError, OSError):
                self._old_handlers[sig] = signal.signal(sig, self._on_signal)

    def _on_signal(self, signum: int, _frame: Any) -> None:
        notice = read_notice_file(self._notice_path)
        if notice is None:
            now, name = utc_now(), signal.Signals(signum).name
            notice = PreemptionNotice(
                "sigterm",
                now,
                now + timedelta(seconds=self.req.sigterm_grace_s),
                provider_ref=f"{name}@{now.isoformat()}",
                detail={"signal": name, "reason": "signal"},
                is_preemption=signum == signal.SIGTERM,
            )
        self.controller.request(notice)

    def _start_watchers(self) -> None:
        urls = self.req.watchers if self.req.watchers is not None else watcher_urls_for(self.location)
        watchers = build_watchers(urls)
        if watchers:
            self._watcher = WatcherThread(watchers, self.controller, interval_s=self.req.poll_interval_s)
            self._watcher.start()

    def _emergency(self) -> None:
        if not self.controller.is_set():
            notice = read_notice_file(self._notice_path)
            if notice is not None:
                self.controller.request(notice)
        if self.ranks is not None:
            self._share_notice()
        notice = self.controller.notice
        assert notice is not None
        notice.assign_id(self.job, self.location)
        virtual_noticed = virtual_now()
        timings: dict[str, float] = {"notice_monotonic": notice.monotonic_at}
        log.warning("%s notice %s at step %d: checkpointing", notice.kind, notice.notice_id, self.step)
        if self.step == self.start_step and self._restored:
            pass  # no step since the resumed checkpoint: it is the one to recover from
        elif self.step == self._last_saved_step and (self.tiers is not None or self.ranks is not None):
            if self.tiers is not None:
                self.tiers.flush(timeout_s=max(1.0, notice.remaining_s() - 1.0))  # finish its upload
        else:
            try:
                self.save("emergency", sync=True, timings=timings)
            except SpotshiftError as exc:
                log.error("emergency checkpoint failed: %s", exc)
                self.result["error"] = f"emergency checkpoint failed: {exc}"
        emergency_s = time.monotonic() - notice.monotonic_at
        committed_wall = utc_now()
        self.result["notice"] = notice.to_dict()
        self.result["emergency"] = {
            "seconds": round(emergency_s, 4),
            "deadline_margin_s": round((notice.deadline_at - committed_wall).total_seconds(), 3),
            "committed_at": committed_wall.isoformat(),
            "virtual_noticed_at": virtual_noticed.isoformat(),
            "timings": {k: round(v, 6) for k, v in timings.items() if k.endswith("_s")},
        }
        self.result["status"] = "preempted" if notice.is_preemption else "stopped"
        if not self.supervised and notice.is_preemption and self.rank == 0:
            record_preemption(
                self.region,
                self.facts,
                self.req,
                notice,
                step=self.step,
                checkpoint=self.checkpoint or self.result.get("resumed_from"),
                emergency_s=emergency_s,
                committed_wall=committed_wall,
                virtual_noticed=virtual_noticed,
                watcher=self._watcher,
            )
        self._write_result()
        self._stopped = True

    def _share_notice(self) -> None:
        """Every rank takes the notice of the lowest rank that has one (the others stopped with it)."""
        assert self.ranks is not None
        mine = self.controller.notice
        docs = self.ranks.all_gather({**mine.to_dict(), "monotonic_at": mine.monotonic_at} if mine else None)
        if mine is None:
            self.controller.request(notice_from_dict(next(d for d in docs if d is not None)))
