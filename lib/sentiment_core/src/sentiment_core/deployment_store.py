"""State documents in Firestore (the deployment document, the retrain check's): reads, and decisions committed
as compare-and-swap.

Every change reads the document, lets a pure decision function choose from what it read, then commits the new
state and its history entries in one batch guarded by the update time that was read. Two runs at once cannot
both win, so a change is claimed (and its event published) once. Firestore transactions would give the same
guarantee, but the emulator locks documents pessimistically and concurrent transactions on one document time
out there (docs/promotion.md).
"""

from __future__ import annotations

import dataclasses
import random
import time
import uuid
from collections.abc import Callable, Iterable, Mapping
from datetime import UTC, datetime
from typing import Any, Generic, Protocol, TypeVar

from sentiment_core import config
from sentiment_core.contract import MODEL_NAME
from sentiment_core.deployments import DeploymentState

DEPLOYMENTS = "deployments"
HISTORY = "history"


class StateUnavailable(RuntimeError):
    """Firestore could not be read or written in time."""


class StateContended(StateUnavailable):
    """Too many concurrent writers: every compare-and-swap attempt lost."""


def utc_now() -> datetime:
    return datetime.now(UTC)


def deployments_database(env: Mapping[str, str] | None = None) -> str:
    """DEPLOYMENTS_DATABASE: the Firestore database of the deployment documents (their history, claims and
    outbox). In the cloud a database of its own, which only the watcher and the redeploy may write (IAM
    conditions, infra/terraform/iam.tf): what gets deployed is never in reach of the public functions."""
    return config.optional("DEPLOYMENTS_DATABASE", "(default)", env)


@dataclasses.dataclass(frozen=True)
class StateSettings:
    """Where the deployment document lives; every unit that reads or writes it parses these variables.

    `database` (FIRESTORE_DATABASE) holds predictions, counters and references; `deployments_database`
    (DEPLOYMENTS_DATABASE) the deployment documents. Both "(default)" unless set, as in the local stack.
    """

    project: str
    database: str
    model_name: str
    deployments_database: str = "(default)"

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> StateSettings:
        return cls(
            project=config.required("GOOGLE_CLOUD_PROJECT", env),
            database=config.optional("FIRESTORE_DATABASE", "(default)", env),
            model_name=config.optional("MODEL_NAME", MODEL_NAME, env),
            deployments_database=deployments_database(env),
        )


def firestore_client(settings: StateSettings) -> Any:
    """A client of the main database (honours FIRESTORE_EMULATOR_HOST); imported here so importing costs nothing."""
    from google.cloud import firestore

    return firestore.Client(project=settings.project, database=settings.database)


def deployments_client(settings: StateSettings) -> Any:
    """A client of the deployments database: what a DeploymentStore is built on."""
    from google.cloud import firestore

    return firestore.Client(project=settings.project, database=settings.deployments_database)


class Stored(Protocol):
    """A document's state as a typed value: what a StateDocument reads and writes."""

    @classmethod
    def from_document(cls, data: dict[str, Any] | None) -> Any: ...

    def to_document(self, before: Any = None) -> dict[str, Any]: ...


class Entry(Protocol):
    """A history entry: when it happened and its fields."""

    at: datetime

    def to_document(self) -> dict[str, Any]: ...


class Decided(Protocol):
    """A decision over a document: the state to leave behind and the entries that record it."""

    state: Any
    history: tuple[Any, ...]

    def writes(self, before: Any) -> bool: ...


S = TypeVar("S", bound=Stored)
D = TypeVar("D", bound=Decided)


@dataclasses.dataclass(frozen=True)
class Snapshot(Generic[S]):
    state: S
    update_time: Any  # None when the document does not exist yet


class StateDocument(Generic[S]):
    """Reads and conditional writes of one state document and its `history` subcollection.

    The state type turns the stored fields into a typed value and back (`from_document(None)` is the state of a
    document that does not exist yet; `to_document(before=...)` the fields of an update).
    """

    def __init__(
        self,
        client: Any,
        collection: str,
        document_id: str,
        state_type: type[S],
        timeout_s: float = 5.0,
        clock: Callable[[], datetime] = utc_now,
    ) -> None:
        self._client = client
        self._document = client.collection(collection).document(document_id)
        self._state_type = state_type
        self._timeout = timeout_s
        self._clock = clock

    @property
    def path(self) -> str:
        return self._document.path

    def _retry(self) -> Any:
        """Transient errors retried, never past the bound: the client's default retry waits out a hung Firestore
        for minutes, which a request (GET /statistics, GET /status, a tick) must not."""
        from google.api_core.retry import Retry, if_transient_error

        return Retry(predicate=if_transient_error, initial=0.05, maximum=0.5, timeout=self._timeout)

    def read(self) -> Snapshot[S]:
        from google.api_core import exceptions as gexc

        try:
            snapshot = self._document.get(retry=self._retry(), timeout=self._timeout)
        except (gexc.GoogleAPICallError, gexc.RetryError) as exc:
            raise StateUnavailable(f"cannot read {self._document.path}: {exc}") from exc
        if not snapshot.exists:
            return Snapshot(self._state_type.from_document(None), None)
        return Snapshot(self._state_type.from_document(snapshot.to_dict()), snapshot.update_time)

    def commit(self, read: Snapshot[S], new: S, history: Iterable[Entry] = ()) -> bool:
        """Write new state and history entries atomically if nobody wrote since `read`; False if someone did."""
        from google.api_core import exceptions as gexc

        batch = self._client.batch()
        if read.update_time is None:
            batch.create(self._document, new.to_document())
        else:
            batch.update(
                self._document,
                new.to_document(before=read.state),
                option=self._client.write_option(last_update_time=read.update_time),
            )
        for entry in history:
            # Time-ordered ids keep the history readable in the console; the suffix keeps them unique.
            entry_id = f"{entry.at.strftime('%Y%m%dT%H%M%S%fZ')}-{uuid.uuid4().hex[:8]}"
            batch.create(self._document.collection(HISTORY).document(entry_id), entry.to_document())
        try:
            batch.commit(retry=self._retry(), timeout=self._timeout)
        except (gexc.FailedPrecondition, gexc.AlreadyExists, gexc.Aborted, gexc.Conflict):
            return False
        except (gexc.GoogleAPICallError, gexc.RetryError) as exc:
            raise StateUnavailable(f"cannot write {self._document.path}: {exc}") from exc
        return True

    def apply(self, decide: Callable[[S, datetime], D], attempts: int = 25) -> D:
        """decide(current state, now) until its decision is committed (or writes nothing); that decision."""
        for attempt in range(attempts):
            snapshot = self.read()
            decision = decide(snapshot.state, self._clock())
            if not decision.writes(snapshot.state) or self.commit(snapshot, decision.state, decision.history):
                return decision
            time.sleep(random.uniform(0, 0.02 * (attempt + 1)))  # spread the losers of a race apart
        raise StateContended(f"{self._document.path}: {attempts} concurrent-write conflicts in a row")

    def history(self, limit: int = 50) -> list[dict[str, Any]]:
        """The stored entries, newest first, as they are in Firestore (what `/status` shows)."""
        from google.api_core import exceptions as gexc
        from google.cloud import firestore

        query = self._document.collection(HISTORY).order_by("at", direction=firestore.Query.DESCENDING).limit(limit)
        try:
            return [doc.to_dict() for doc in query.stream(retry=self._retry(), timeout=self._timeout)]
        except (gexc.GoogleAPICallError, gexc.RetryError) as exc:
            raise StateUnavailable(f"cannot read the history: {exc}") from exc


class DeploymentStore(StateDocument[DeploymentState]):
    """Reads and conditional writes of one model's deployment document `deployments/{model}`."""

    def __init__(
        self, client: Any, model_name: str, timeout_s: float = 5.0, clock: Callable[[], datetime] = utc_now
    ) -> None:
        super().__init__(client, DEPLOYMENTS, model_name, DeploymentState, timeout_s, clock)
