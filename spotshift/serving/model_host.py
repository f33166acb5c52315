"""The model a replica serves: a committed training checkpoint, verified and decrypted, then greedy decoding.

Which checkpoint
----------------

An endpoint's ``model`` is either a checkpoint path (``<store>/checkpoints/<job>/<id>``: that one,
which must verify; ``.../<job>`` or ``.../latest``: the newest that verifies) or a declared job's
name: the job's newest verified checkpoint among the replica's own region store
(``spotshift.home.region_store_url``), the store of the region the job runs in (its placement
state) and the one it starts in — read from the replica's own store when that one holds the newest,
so that every replica of the endpoint serves the same checkpoint wherever it runs. Every part is checked against its hash, the seal and
the key before a single tensor is loaded (:meth:`~spotshift.checkpoint.format.StoredCheckpoint.read_parts`);
a checkpoint that fails is refused with the checkpoint reader's one-line :class:`IntegrityError`.

Decoding
--------

The trainer's tokenisation is byte-level (vocabulary 256, :mod:`spotshift.training.data`): the
prompt's UTF-8 bytes are its tokens. Each new token is the argmax of the model's logits over the
last ``seq_len`` tokens (ties: the lowest token id, torch's argmax rule), under
``torch.use_deterministic_algorithms``: the same prompt and ``max_tokens`` give the same completion
on every replica of the same checkpoint, which is what lets the router retry a request elsewhere.
The completion's bytes are decoded as UTF-8 with U+FFFD for byte sequences that are not valid
UTF-8 (a byte-level model may cut a character in two); ``completion_tokens`` counts bytes generated.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any

from spotshift.checkpoint.format import (
    StoredCheckpoint,
    list_checkpoints,
    open_newest_verified,
    parse_checkpoint_path,
    step_of,
    tensors_of,
)
from spotshift.checkpoint.keys import open_key_provider
from spotshift.errors import ConfigError, IntegrityError, NotFoundError
from spotshift.jobs import get_job
from spotshift.placement.state import load_state
from spotshift.pricing.regions import region_of
from spotshift.sync.store_url import open_store
from spotshift.training.runs import store_url_for


@dataclass(frozen=True)
class Completion:
    """One greedy completion: its text and token counts."""

    text: str
    prompt_tokens: int
    completion_tokens: int


class ServedModel:
    """A loaded :class:`~spotshift.training.model.TinyGPT` in eval mode; :meth:`complete` is thread-safe
    (one forward pass at a time: a replica serves one request on the model at a time, others queue)."""

    def __init__(self, model: Any, *, job: str, checkpoint_id: str, label: str, seq_len: int):
        self.model = model
        self.job = job
        self.checkpoint_id = checkpoint_id
        self.label = label
        self.seq_len = seq_len
        self._lock = threading.Lock()

    def complete(self, prompt: str, max_tokens: int) -> Completion:
        """Greedy-decode ``max_tokens`` byte tokens after ``prompt`` (see the module docstring)."""
        import torch

        tokens = list(prompt.encode("utf-8"))
        prompt_tokens = len(tokens)
        out: list[int] = []
        with self._lock, torch.inference_mode():
            for _ in range(max_tokens):
                ctx = torch.tensor([tokens[-self.seq_len :]], dtype=torch.long)
                nxt = int(torch.argmax(self.model(ctx)[0, -1]).item())
                tokens.append(nxt)
                out.append(nxt)
        return Completion(bytes(out).decode("utf-8", errors="replace"), prompt_tokens, len(out))


def _job_store_urls(job_name: str, location: str) -> list[str]:
    job = get_job(job_name)
    places = [location]
    state = load_state(job_name)
    if state.location:
        places.append(state.location)
    if job.start_location:
        places.append(job.start_location)
    urls: list[str] = []
    for place in places:
        url = store_url_for(region_of(place))
        if url not in urls:
            urls.append(url)
    return urls


def _open_verified(model_ref: str, location: str, keys: Any) -> tuple[Any, dict[str, bytes]]:
    """(StoredCheckpoint, verified plaintext parts) for an endpoint's model reference."""
    if "/checkpoints/" in model_ref or "://" in model_ref:
        store_url, job, ckpt_id = parse_checkpoint_path(model_ref)
        store = open_store(store_url)
        if ckpt_id is not None:
            ck = StoredCheckpoint(store, job, ckpt_id)
            return ck, ck.read_parts(keys)
        found = open_newest_verified(store, job, keys)
        if found is None:
            raise NotFoundError(f"no committed checkpoint of job {job!r} in {store.url}")
        return found.checkpoint, found.parts
    # every replica of a job's model serves the job's newest checkpoint, wherever it runs: a store
    # that holds only older ones (a region the job left) must not make one replica answer otherwise
    newest: list[tuple[int, int, Any]] = []
    for order, url in enumerate(_job_store_urls(model_ref, location)):
        store = open_store(url)
        ids = list_checkpoints(store, model_ref)
        if ids:
            newest.append((-step_of(ids[-1]), order, store))
    for _, _, store in sorted(newest, key=lambda t: t[:2]):
        found = open_newest_verified(store, model_ref, keys)
        if found is not None:
            return found.checkpoint, found.parts
    raise NotFoundError(
        f"job {model_ref!r} has no committed checkpoint in the stores of {location} or where it runs"
    )


def load_served_model(
    model_ref: str, location: str, *, key_provider: str | None = None, num_threads: int = 1
) -> ServedModel:
    """Open, verify, decrypt and load the checkpoint an endpoint serves (module docstring).

    Raises :class:`IntegrityError` (one line naming the checkpoint) when it does not verify,
    :class:`NotFoundError` when there is none, :class:`ConfigError` for a bad reference or key.
    """
    from spotshift.training.model import TinyGPT
    from spotshift.training.trainer import configure_determinism

    keys = open_key_provider(key_provider)
    ck, parts = _open_verified(model_ref, location, keys)
    cfg = ck.meta.get("state", {}).get("model_config")
    if not isinstance(cfg, dict):
        raise IntegrityError(f"{ck.label}: no model_config in its state")
    try:
        model = TinyGPT.from_config(cfg)
    except ConfigError as exc:
        raise IntegrityError(f"{ck.label}: {exc}") from None
    configure_determinism(num_threads)
    tensors = tensors_of(parts)
    if "model" not in tensors:
        raise IntegrityError(f"{ck.label}: no model part")
    missing, unexpected = model.load_state_dict(tensors["model"], strict=False)
    if missing or unexpected:
        raise IntegrityError(f"{ck.label}: model tensors do not match its config ({len(missing)} missing)")
    model.eval()
    return ServedModel(
        model, job=ck.job, checkpoint_id=ck.checkpoint_id, label=ck.label, seq_len=model.seq_len
    )
