"""Putting a staged version in front of traffic: Cloud Run in the cloud, the local router at home.

Both end the same way: the public URL's /healthz must report the new version before the deploy counts as done.
A progressive rollout puts the new version beside the serving one instead: `deploy_candidate` gives it a share of
the traffic (a `Split`), `set_split` moves the share, and `complete` or `roll_back` leaves one revision with all of
it. Every traffic change is idempotent: applying the split that is already in place changes nothing, so the
watcher can apply its decision again after a crash.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
import time
import urllib.error
import urllib.request
from typing import Any, Protocol

from sentiment_core.events import ProductionChanged

MODEL_URI_ENV = "MODEL_URI"
MODEL_SHA256_ENV = "MODEL_SHA256"  # predict serves the staged model only when its file has this sha256
CANDIDATE_TAG = "candidate"
HEALTH_PATH = "/healthz"
# Startup probe of every revision the redeploy makes: /healthz loads the model (and checks MODEL_SHA256), so a
# revision whose model cannot serve never becomes ready and Cloud Run never gives it traffic. Two minutes for a
# cold start that downloads the model; each probe may take a while, as the first one does the loading.
STARTUP_PROBE = {"period_seconds": 10, "timeout_seconds": 10, "failure_threshold": 12}


class DeployError(RuntimeError):
    """The new version is not serving (the old one still is)."""


def check_share(percent: int) -> None:
    """A candidate's share: 100 is not a split (the stable revision would stay live for nothing), it is complete."""
    if isinstance(percent, bool) or not isinstance(percent, int) or not 0 <= percent < 100:
        raise ValueError(f"a candidate's share is a whole percent from 0 to 99 (100 is complete), got {percent!r}")


@dataclasses.dataclass(frozen=True)
class Split:
    """Traffic shared by two live revisions: the candidate gets `percent`, the stable revision the rest."""

    stable: str
    candidate: str
    percent: int

    def __post_init__(self) -> None:
        check_share(self.percent)
        if not self.stable or not self.candidate or self.stable == self.candidate:
            raise ValueError(f"a split needs two different revisions, got {self.stable!r} and {self.candidate!r}")


@dataclasses.dataclass(frozen=True)
class Deployed:
    revision: str
    url: str  # for a candidate, its own URL (it can be called directly); otherwise the public URL
    split: Split | None = None  # set when the revision is a candidate beside the stable one


class Deployer(Protocol):
    def deploy(self, event: ProductionChanged) -> Deployed:
        """The event's version takes all the traffic at once; every other revision is drained."""
        ...

    def deploy_candidate(self, event: ProductionChanged, percent: int) -> Deployed:
        """A new revision on the event's version gets `percent` of the traffic; the serving one keeps the rest."""
        ...

    def set_split(self, split: Split) -> None:
        """Move the candidate's share; a no-op when the split is already in place."""
        ...

    def complete(self, split: Split) -> Deployed:
        """The candidate takes all the traffic; the stable revision is drained."""
        ...

    def roll_back(self, split: Split) -> Deployed:
        """The stable revision takes all the traffic back; the candidate is drained."""
        ...

    def current_split(self) -> Split | None:
        """The split in place, or None when one revision has all the traffic."""
        ...


def wait_until_serving(url: str, version: str, timeout_s: float, headers: dict[str, str] | None = None) -> None:
    """Poll url/healthz until it reports `version` (traffic can take a moment to move)."""
    deadline = time.monotonic() + timeout_s
    seen: Any = None
    while True:
        try:
            request = urllib.request.Request(url.rstrip("/") + "/healthz", headers=headers or {})
            with urllib.request.urlopen(request, timeout=5) as response:
                seen = json.loads(response.read()).get("model_version")
            if seen == version:
                return
        except (urllib.error.URLError, OSError, ValueError, AttributeError) as exc:
            seen = f"error: {exc}"
        if time.monotonic() >= deadline:
            raise DeployError(f"{url}/healthz reports version {seen!r}, not {version!r}, after {timeout_s:.0f} s")
        time.sleep(0.5)


class CloudRunDeployer:
    """Updates the Cloud Run service behind `predict` (Cloud Run Admin API v2) to a new revision.

    The new revision gets MODEL_URI = the staged folder, MODEL_SHA256 = the sha256 the event announced (predict
    refuses a model file that differs), a startup probe on /healthz, and a `model-version` label. `deploy` sets
    traffic to 100% on the latest revision explicitly, because a manual rollback leaves a fixed split that would
    otherwise keep every request on the old revision. A rollout pins traffic by revision name instead, the candidate
    tagged `candidate` so that it has a URL of its own. Cloud Run drains the old instances itself.

    A revision is Ready only once its startup probe answered: predict's /healthz, which fails unless the model
    loaded from MODEL_URI (the version's own folder) with MODEL_SHA256. The deployer does not call /healthz itself:
    predict's ingress admits internal and load-balancer traffic only, and a function without VPC egress is
    neither, so its own request would be refused.
    """

    def __init__(
        self,
        service_name: str,
        *,
        client: Any = None,
        ready_timeout_s: float = 480.0,
    ) -> None:
        from google.cloud import run_v2

        self._run = run_v2
        self._service_name = service_name
        self._client = client or run_v2.ServicesClient()
        self._ready_timeout = ready_timeout_s

    def deploy(self, event: ProductionChanged) -> Deployed:
        run_v2 = self._run
        service = self._get()
        self._configure(service, event, revision="")  # a fixed name from the last deploy would fail the update
        latest = run_v2.TrafficTargetAllocationType.TRAFFIC_TARGET_ALLOCATION_TYPE_LATEST
        service.traffic[:] = [run_v2.TrafficTarget(type_=latest, percent=100)]
        updated = self._update(service)
        ready = self._ready_revision(updated)
        return Deployed(revision=ready, url=updated.uri)

    def deploy_candidate(self, event: ProductionChanged, percent: int) -> Deployed:
        check_share(percent)
        service = self._get()
        name = self._candidate_name(event)
        stable, candidate = self._serving(service)
        if candidate not in (None, name):
            raise DeployError(f"{candidate} is already a candidate beside {stable}: complete or roll it back first")
        split = Split(stable, name, percent)
        if candidate is None:
            # Named here so that the same update can route traffic to it: one operation, and a revision that
            # fails to start fails the update with the stable revision still serving everything.
            self._configure(service, event, revision=name)
            service.traffic[:] = self._targets(split)
            updated = self._update(service)
        else:  # a retry: the revision exists, only its share may need setting
            updated = self._route(self._targets(split))
        ready = self._ready_revision(updated)
        if ready != name:
            raise DeployError(f"the candidate revision {name} is not the latest ready one ({ready})")
        return Deployed(revision=name, url=self._tag_uri(updated), split=split)

    def set_split(self, split: Split) -> None:
        self._route(self._targets(split))

    def complete(self, split: Split) -> Deployed:
        return Deployed(revision=split.candidate, url=self._route(self._targets_all(split.candidate)).uri)

    def roll_back(self, split: Split) -> Deployed:
        return Deployed(revision=split.stable, url=self._route(self._targets_all(split.stable)).uri)

    def current_split(self) -> Split | None:
        service = self._get()
        stable, candidate = self._serving(service)
        if candidate is None:
            return None
        percent = next(t.percent for t in service.traffic_statuses if t.tag == CANDIDATE_TAG)
        return Split(stable, candidate, percent)

    def _get(self) -> Any:
        from google.api_core import exceptions as gexc

        try:
            return self._client.get_service(name=self._service_name)
        except gexc.GoogleAPIError as exc:
            raise DeployError(f"reading the Cloud Run service {self._service_name} failed: {exc}") from exc

    def _update(self, service: Any) -> Any:
        from google.api_core import exceptions as gexc

        try:
            operation = self._client.update_service(service=service)
            return operation.result(timeout=self._ready_timeout)
        except (gexc.GoogleAPIError, TimeoutError) as exc:
            raise DeployError(f"Cloud Run update of {self._service_name} failed: {exc}") from exc

    def _configure(self, service: Any, event: ProductionChanged, *, revision: str) -> None:
        template = service.template
        if not template.containers:
            raise DeployError(f"{self._service_name} has no container to configure")
        container = template.containers[0]
        self._set_env(container, MODEL_URI_ENV, event.model_uri)
        self._set_env(container, MODEL_SHA256_ENV, event.sha256)
        container.startup_probe = self._run.Probe(http_get=self._run.HTTPGetAction(path=HEALTH_PATH), **STARTUP_PROBE)
        template.labels["model-version"] = event.model_version
        template.revision = revision

    def _set_env(self, container: Any, name: str, value: str) -> None:
        for variable in container.env:
            if variable.name == name:
                variable.value = value
                return
        container.env.append(self._run.EnvVar(name=name, value=value))

    def _candidate_name(self, event: ProductionChanged) -> str:
        """Deterministic, so a redelivered event finds its revision; unique per promotion, because Cloud Run
        never reuses a revision name and a version promoted again after a rollback needs a new revision."""
        service_id = self._service_name.rsplit("/", 1)[-1]
        version = re.sub(r"[^a-z0-9]+", "-", event.model_version.lower()).strip("-")[:20]
        digest = hashlib.sha256(f"{event.event_id}:{event.model_uri}".encode()).hexdigest()[:8]
        return f"{service_id}-v{version}-{digest}"

    def _serving(self, service: Any) -> tuple[str, str | None]:
        """(the stable revision, the tagged candidate or None), from what the service reports it routes."""
        latest = self._run.TrafficTargetAllocationType.TRAFFIC_TARGET_ALLOCATION_TYPE_LATEST
        stable, candidate = None, None
        for status in service.traffic_statuses:
            revision = status.revision or (
                service.latest_ready_revision.rsplit("/", 1)[-1] if status.type_ == latest else ""
            )
            if status.tag == CANDIDATE_TAG:
                candidate = revision
            elif status.percent > 0:
                if stable is not None:
                    raise DeployError(f"{self._service_name} splits traffic by hand ({stable}, {revision})")
                stable = revision
        if stable is None:
            raise DeployError(f"{self._service_name} routes no traffic to a stable revision")
        return stable, candidate

    def _targets(self, split: Split) -> list[Any]:
        run_v2 = self._run
        by_revision = run_v2.TrafficTargetAllocationType.TRAFFIC_TARGET_ALLOCATION_TYPE_REVISION
        return [
            run_v2.TrafficTarget(type_=by_revision, revision=split.stable, percent=100 - split.percent),
            run_v2.TrafficTarget(type_=by_revision, revision=split.candidate, percent=split.percent, tag=CANDIDATE_TAG),
        ]

    def _targets_all(self, revision: str) -> list[Any]:
        by_revision = self._run.TrafficTargetAllocationType.TRAFFIC_TARGET_ALLOCATION_TYPE_REVISION
        return [self._run.TrafficTarget(type_=by_revision, revision=revision, percent=100)]

    def _route(self, targets: list[Any]) -> Any:
        """Traffic to `targets` (the template untouched, so no new revision); no update when already so."""
        service = self._get()
        if _traffic_key(service.traffic) == _traffic_key(targets):
            return service
        service.traffic[:] = targets
        return self._update(service)

    def _ready_revision(self, service: Any) -> str:
        ready = service.latest_ready_revision
        if not ready or ready != service.latest_created_revision:
            raise DeployError(
                f"revision {service.latest_created_revision} is not ready (latest ready: {ready or 'none'})"
            )
        return ready.rsplit("/", 1)[-1]

    def _tag_uri(self, service: Any) -> str:
        for status in service.traffic_statuses:
            if status.tag == CANDIDATE_TAG and status.uri:
                return status.uri
        raise DeployError(f"{self._service_name} reports no URL for the tag {CANDIDATE_TAG!r}")


def _traffic_key(targets: Any) -> list[tuple[int, str, int, str]]:
    return sorted((int(t.type_), t.revision, t.percent, t.tag) for t in targets)


class LocalDeployer:
    """The local stack's router (localdev.router) plays Cloud Run: it starts a predict process on the new
    version, waits until it is healthy, then gives it all traffic or, as a candidate, its share; a revision that
    loses its traffic is drained and stopped."""

    def __init__(self, admin_url: str, public_url: str, timeout_s: float = 120.0) -> None:
        self._admin = admin_url.rstrip("/")
        self._public = public_url.rstrip("/")
        self._timeout = timeout_s

    def deploy(self, event: ProductionChanged) -> Deployed:
        answer = self._call("POST", "/revisions", _revision(event))
        wait_until_serving(self._public, event.model_version, 30.0)
        return Deployed(revision=answer["revision"], url=self._public)

    def deploy_candidate(self, event: ProductionChanged, percent: int) -> Deployed:
        check_share(percent)
        answer = self._call("POST", "/revisions", {**_revision(event), "percent": percent})
        wait_until_serving(answer["url"], event.model_version, 30.0)
        return Deployed(revision=answer["revision"], url=answer["url"], split=_split(answer))

    def set_split(self, split: Split) -> None:
        self._call("PUT", "/traffic", dataclasses.asdict(split))

    def complete(self, split: Split) -> Deployed:
        return self._take_all(split.candidate)

    def roll_back(self, split: Split) -> Deployed:
        return self._take_all(split.stable)

    def current_split(self) -> Split | None:
        return _split(self._call("GET", "/revisions"))

    def _take_all(self, revision: str) -> Deployed:
        answer = self._call("PUT", "/traffic", {"revision": revision})
        wait_until_serving(self._public, answer["model_version"], 30.0)
        return Deployed(revision=revision, url=self._public)

    def _call(self, method: str, path: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(
            f"{self._admin}{path}", data=data, headers={"Content-Type": "application/json"}, method=method
        )
        try:
            with urllib.request.urlopen(request, timeout=self._timeout) as response:
                return json.loads(response.read())
        except urllib.error.HTTPError as exc:
            raise DeployError(
                f"the local router refused the revision change ({method} {path}): {exc.read()[:500]!r}"
            ) from exc
        except (urllib.error.URLError, OSError, ValueError) as exc:
            raise DeployError(f"the local router at {self._admin} failed: {exc}") from exc


def _revision(event: ProductionChanged) -> dict[str, str]:
    """What the router starts a predict process on: the folder, its version and the sha256 it must have."""
    return {"model_uri": event.model_uri, "model_version": event.model_version, "sha256": event.sha256}


def _split(described: dict[str, Any]) -> Split | None:
    split = described.get("split")
    return Split(split["stable"], split["candidate"], split["percent"]) if split else None
