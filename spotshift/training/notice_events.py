"""Preemption notice events: what a preempted trainer or replica records, what the sensors read.

One interface, two places, chosen like the placement state (:func:`spotshift.statestore.shared_store`):

* **Embedded default** — ``events/preemption/<notice_id>.json`` in the region's object store,
  written once (``if_absent``: a second write of one notice id changes nothing).
* **PostgreSQL** (the Dagster instance is on PostgreSQL) — a row of ``spotshift_state`` with kind
  ``preemption-notice`` and the notice id as key, written once in one transaction
  (``INSERT ... ON CONFLICT DO NOTHING``): any number of concurrent writers of one notice, on any
  host, leave exactly one event, and the first one's content.

Readers never claim an event: the preemption sensor turns each into a run request whose run key
is the notice id and remembers it in its cursor, both committed by Dagster with the tick, so a
daemon that dies in the middle of a tick neither loses nor repeats a recovery.
"""

from __future__ import annotations

import json
from typing import Any

from spotshift.errors import ConfigError
from spotshift.home import region_store_url
from spotshift.statestore import shared_store
from spotshift.sync.store_url import open_store

NOTICE_PREFIX = "events/preemption/"
KIND = "preemption-notice"
REQUIRED = ("notice_id", "job", "location")


def record_notice(event: dict[str, Any], *, store: Any = None) -> bool:
    """Record a notice event (``notice_id``, ``job`` and ``location`` required) once: whether this
    call wrote it. ``store`` is the location's region store when the caller has it open."""
    missing = [k for k in REQUIRED if not event.get(k)]
    if missing:
        raise ConfigError(f"preemption notice event: missing {', '.join(missing)}")
    shared = shared_store()
    if shared is not None:
        return shared.insert_once(KIND, str(event["notice_id"]), event)
    region = store if store is not None else open_store(region_store_url(str(event["location"])))
    key = f"{NOTICE_PREFIX}{event['notice_id']}.json"
    return bool(region.put_bytes(key, json.dumps(event, sort_keys=True).encode(), if_absent=True))


def read_notices(location: str, *, skip: set[str] | frozenset[str] = frozenset()) -> list[dict[str, Any]]:
    """Notice events recorded for ``location``, oldest first, except the ids in ``skip``. A malformed
    event raises :class:`ConfigError` naming it."""
    shared = shared_store()
    if shared is not None:
        where = shared.describe()
        raws = [(str(r.get("notice_id")), r) for r in shared.list(KIND, field="location", value=location)]
    else:
        store = open_store(region_store_url(location))
        where = store.url
        raws = []
        for key in store.list_keys(NOTICE_PREFIX):
            notice_id = key[len(NOTICE_PREFIX) :].removesuffix(".json")
            if not key.endswith(".json") or notice_id in skip:
                continue
            try:
                raws.append((notice_id, json.loads(store.get_bytes(key))))
            except ValueError:
                raise ConfigError(f"preemption notice {key} in {where}: not valid JSON") from None
    out = []
    for notice_id, raw in raws:
        if notice_id in skip:
            continue
        missing = [k for k in REQUIRED if not raw.get(k)]
        if missing or raw.get("notice_id") != notice_id:
            raise ConfigError(
                f"preemption notice {notice_id} in {where}: missing or wrong {', '.join(missing) or 'notice_id'}"
            )
        out.append(raw)
    return sorted(out, key=lambda r: (str(r.get("noticed_at", "")), r["notice_id"]))
