"""Deployment state in Firestore: `deployments/{model}` plus a `history` entry for every decision.

Every change is a compare-and-swap: read the document, decide, then commit the new state and its history
entries in one batch guarded by the update time that was read. Two watcher runs at once cannot both win, so a
change is claimed (and its event published) once. Transactions would give the same guarantee, but the emulator
locks documents pessimistically and concurrent transactions on one document time out there (with 4 threads,
14 of 40 committed).
"""

from __future__ import annotations

import dataclasses
import random
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from google.api_core import exceptions as gexc
from google.cloud import firestore

DEPLOYMENTS = "deployments"
HISTORY = "history"


class StateUnavailable(RuntimeError):
    """Firestore could not be read or written in time."""


class StateContended(StateUnavailable):
    """Too many concurrent writers: every compare-and-swap attempt lost."""


# A decision: the new state and the history entries to write with it, or None to write nothing.
Decision = tuple["State", list[dict[str, Any]]] | None


def utc_now() -> datetime:
    return datetime.now(UTC)


@dataclasses.dataclass(frozen=True)
class Lease:
    """Work someone is doing (a claim on a change, a deploy in progress), valid until it expires."""

    key: str  # the version claimed, or the event id being deployed
    owner: str
    expires_at: datetime

    def active(self, now: datetime) -> bool:
        return now < self.expires_at

    @classmethod
    def new(cls, key: str, seconds: float) -> Lease:
        return cls(key=key, owner=uuid.uuid4().hex, expires_at=utc_now() + timedelta(seconds=seconds))


@dataclasses.dataclass(frozen=True)
class State:
    """What the watcher knows of one registered model.

    desired:  the version the registry named on the last look (None: no production version).
    target:   the last version staged and announced (its event), i.e. what should be serving.
    serving:  the version the last successful redeploy put in front of traffic.
    outbox:   an event committed but not yet confirmed published.
    refused:  the version the gate refused, with its reason; not retried until promoted again.
    """

    desired: dict[str, Any] | None = None
    target: dict[str, Any] | None = None
    serving: dict[str, Any] | None = None
    outbox: dict[str, Any] | None = None
    refused: dict[str, Any] | None = None
    claim: Lease | None = None
    deploying: Lease | None = None

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None) -> State:
        data = data or {}
        fields = {f.name for f in dataclasses.fields(cls)}
        values = {k: v for k, v in data.items() if k in fields}
        for name in ("claim", "deploying"):
            if values.get(name):
                values[name] = Lease(**values[name])
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        data = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        for name in ("claim", "deploying"):
            if data[name] is not None:
                data[name] = dataclasses.asdict(data[name])
        return data

    def version(self, field: str) -> str | None:
        value = getattr(self, field)
        return value.get("version") if value else None


@dataclasses.dataclass(frozen=True)
class Snapshot:
    state: State
    update_time: Any  # None when the document does not exist yet


def history_entry(kind: str, version: str | None, **fields: Any) -> dict[str, Any]:
    """One decision: staged, refused, published, deployed, rolled_back, failed, no_production_version, ..."""
    return {"kind": kind, "version": version, "at": utc_now(), **{k: v for k, v in fields.items() if v is not None}}


class StateStore:
    """Reads and conditional writes of one model's deployment document."""

    def __init__(self, client: firestore.Client, model_name: str, timeout_s: float = 5.0) -> None:
        self._client = client
        self._document = client.collection(DEPLOYMENTS).document(model_name)
        self._timeout = timeout_s

    def read(self) -> Snapshot:
        try:
            snapshot = self._document.get(timeout=self._timeout)
        except (gexc.GoogleAPICallError, gexc.RetryError) as exc:
            raise StateUnavailable(f"cannot read {self._document.path}: {exc}") from exc
        if not snapshot.exists:
            return Snapshot(State(), None)
        return Snapshot(State.from_dict(snapshot.to_dict()), snapshot.update_time)

    def commit(self, read: Snapshot, new: State, history: list[dict[str, Any]] = ()) -> bool:
        """Write new state and history entries atomically if nobody wrote since `read`; False if someone did."""
        batch = self._client.batch()
        if read.update_time is None:
            batch.create(self._document, new.to_dict())
        else:
            batch.update(
                self._document, new.to_dict(), option=self._client.write_option(last_update_time=read.update_time)
            )
        for entry in history:
            # Time-ordered ids keep the history readable in the console; the suffix keeps them unique.
            entry_id = f"{entry['at'].strftime('%Y%m%dT%H%M%S%fZ')}-{uuid.uuid4().hex[:8]}"
            batch.create(self._document.collection(HISTORY).document(entry_id), entry)
        try:
            batch.commit(timeout=self._timeout)
        except (gexc.FailedPrecondition, gexc.AlreadyExists, gexc.Aborted, gexc.Conflict):
            return False
        except (gexc.GoogleAPICallError, gexc.RetryError) as exc:
            raise StateUnavailable(f"cannot write {self._document.path}: {exc}") from exc
        return True

    def update(self, decide: Callable[[State], Decision], attempts: int = 25) -> State:
        """Apply decide() to the current state until its commit wins; the state it left (or found)."""
        for attempt in range(attempts):
            snapshot = self.read()
            decision = decide(snapshot.state)
            if decision is None:
                return snapshot.state
            new, history = decision
            if self.commit(snapshot, new, history):
                return new
            time.sleep(random.uniform(0, 0.02 * (attempt + 1)))  # spread the losers of a race apart
        raise StateContended(f"{self._document.path}: {attempts} concurrent-write conflicts in a row")

    def history(self, limit: int = 50) -> list[dict[str, Any]]:
        """Newest first."""
        query = self._document.collection(HISTORY).order_by("at", direction=firestore.Query.DESCENDING).limit(limit)
        try:
            return [doc.to_dict() for doc in query.stream(timeout=self._timeout)]
        except (gexc.GoogleAPICallError, gexc.RetryError) as exc:
            raise StateUnavailable(f"cannot read the history: {exc}") from exc
