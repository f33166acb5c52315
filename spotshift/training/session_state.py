"""A Session's state dicts as checkpoint JSON + tensors, and the notice file the wrapper writes.

:func:`encode_state` / :func:`decode_state` turn any ``state_dict()`` into the JSON of a
checkpoint's state plus the tensors of its part and back (:mod:`spotshift.checkpointing`).
"""

from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path
from typing import Any

from spotshift.clock import parse_utc
from spotshift.errors import ConfigError, IntegrityError
from spotshift.training.preemption import PreemptionNotice

#: the state marker of a checkpoint written by a Session
SESSION_FORMAT = "spotshift-session/1"


def _is_array(obj: Any) -> bool:
    mod = type(obj).__module__
    return (mod.startswith("torch") and type(obj).__name__ in ("Tensor", "Parameter")) or (
        mod == "numpy" and type(obj).__name__ == "ndarray"
    )


def encode_state(obj: Any, tensors: dict[str, Any], *, what: str, path: str = "") -> Any:
    """JSON of a state dict with every tensor (torch or numpy) moved into ``tensors`` under its path.

    Dicts keep their key order and key types (``{"__dict__": [[key, value], ...]}``), tuples stay
    tuples, non-finite floats survive; anything else that is not JSON raises :class:`ConfigError`
    naming ``what`` and the path.
    """
    if _is_array(obj):
        name = path or "."
        if name in tensors:
            raise ConfigError(f"{what}: two tensors at {name!r}")
        tensors[name] = obj
        return {"__tensor__": name, "numpy": type(obj).__module__ == "numpy"}
    if isinstance(obj, dict):
        items = []
        for k, v in obj.items():
            if not isinstance(k, str | int | float | bool) and k is not None:
                raise ConfigError(f"{what}: key {k!r} at {path or '.'} is a {type(k).__name__}")
            items.append([k, encode_state(v, tensors, what=what, path=f"{path}/{k}" if path else str(k))])
        return {"__dict__": items}
    if isinstance(obj, tuple | list):
        out = [encode_state(v, tensors, what=what, path=f"{path}/{i}") for i, v in enumerate(obj)]
        return {"__tuple__": out} if isinstance(obj, tuple) else out
    if isinstance(obj, float) and not math.isfinite(obj):
        return {"__float__": repr(obj)}
    if obj is None or isinstance(obj, bool | int | float | str):
        return obj
    if type(obj).__module__ == "numpy":  # numpy scalars
        return encode_state(obj.item(), tensors, what=what, path=path)
    if type(obj).__module__.startswith("torch") and type(obj).__name__ in ("dtype", "device"):
        return {"__torch__": type(obj).__name__, "value": str(obj)}
    raise ConfigError(
        f"{what}: value at {path or '.'} is a {type(obj).__name__}, which cannot be checkpointed"
    )


def decode_state(doc: Any, tensors: dict[str, Any], *, what: str) -> Any:
    """The inverse of :func:`encode_state` (tensors from the checkpoint's verified part)."""
    if isinstance(doc, list):
        return [decode_state(v, tensors, what=what) for v in doc]
    if not isinstance(doc, dict):
        return doc
    if "__tensor__" in doc:
        name = doc["__tensor__"]
        if name not in tensors:
            raise IntegrityError(f"{what}: tensor {name!r} is missing")
        t = tensors[name]
        return t.numpy() if doc.get("numpy") and hasattr(t, "numpy") else t
    if "__dict__" in doc:
        return {k: decode_state(v, tensors, what=what) for k, v in doc["__dict__"]}
    if "__tuple__" in doc:
        return tuple(decode_state(v, tensors, what=what) for v in doc["__tuple__"])
    if "__float__" in doc:
        return float(doc["__float__"])
    if "__torch__" in doc:
        import torch

        value = doc["value"]
        return torch.device(value) if doc["__torch__"] == "device" else getattr(torch, value.split(".")[-1])
    raise IntegrityError(f"{what}: unreadable state entry {sorted(doc)}")


def devices_and_dtypes(parts: dict[str, dict[str, Any]]) -> dict[str, str]:
    """Where the checkpointed tensors lived and their dtypes (``"cpu"``, ``"float32,int64"``): recorded
    in the checkpoint's ``versions`` so a move can tell what the state needs."""
    devices, dtypes = set(), set()
    for tensors in parts.values():
        for t in tensors.values():
            devices.add(str(getattr(t, "device", "cpu")).split(":")[0])
            dtypes.add(str(t.dtype).removeprefix("torch."))
    return {"devices": ",".join(sorted(devices)), "dtypes": ",".join(sorted(dtypes))}


def read_notice_file(path: str | os.PathLike[str]) -> PreemptionNotice | None:
    """The :class:`~spotshift.training.preemption.PreemptionNotice` the wrapper wrote, or None."""
    try:
        doc = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None
    return notice_from_dict(doc)


def notice_from_dict(doc: dict[str, Any]) -> PreemptionNotice:
    """A notice from its ``to_dict()`` (plus ``monotonic_at``): the wrapper's file, or another rank's."""
    return PreemptionNotice(
        str(doc["kind"]),
        parse_utc(doc["noticed_at"]),
        parse_utc(doc["deadline_at"]),
        provider_ref=str(doc.get("provider_ref", "")),
        detail=dict(doc.get("detail") or {}),
        notice_id=str(doc.get("notice_id", "")),
        is_preemption=bool(doc.get("is_preemption", True)),
        monotonic_at=float(doc.get("monotonic_at", time.monotonic())),
    )
