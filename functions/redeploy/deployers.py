"""Putting a staged version in front of traffic: Cloud Run in the cloud, the local router at home.

Both end the same way: the public URL's /healthz must report the new version before the deploy counts as done.
"""

from __future__ import annotations

import dataclasses
import json
import time
import urllib.error
import urllib.request
from typing import Any, Protocol

from sentiment_core.events import ProductionChanged

MODEL_URI_ENV = "MODEL_URI"


class DeployError(RuntimeError):
    """The new version is not serving (the old one still is)."""


@dataclasses.dataclass(frozen=True)
class Deployed:
    revision: str
    url: str


class Deployer(Protocol):
    def deploy(self, event: ProductionChanged) -> Deployed: ...


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

    The new revision gets MODEL_URI = the staged folder and a `model-version` label; traffic is set to 100% on
    the latest revision explicitly, because a manual rollback leaves a fixed split that would otherwise keep
    every request on the old revision. Cloud Run drains the old instances itself.
    """

    def __init__(
        self,
        service_name: str,
        *,
        client: Any = None,
        ready_timeout_s: float = 480.0,
        healthz_timeout_s: float = 60.0,
    ) -> None:
        from google.cloud import run_v2

        self._run = run_v2
        self._service_name = service_name
        self._client = client or run_v2.ServicesClient()
        self._ready_timeout = ready_timeout_s
        self._healthz_timeout = healthz_timeout_s

    def deploy(self, event: ProductionChanged) -> Deployed:
        from google.api_core import exceptions as gexc

        run_v2 = self._run
        try:
            service = self._client.get_service(name=self._service_name)
            template = service.template
            if not template.containers:
                raise DeployError(f"{self._service_name} has no container to configure")
            container = template.containers[0]
            for variable in container.env:
                if variable.name == MODEL_URI_ENV:
                    variable.value = event.model_uri
                    break
            else:
                container.env.append(run_v2.EnvVar(name=MODEL_URI_ENV, value=event.model_uri))
            template.labels["model-version"] = event.model_version
            template.revision = ""  # a fixed revision name from the last deploy would make this update fail
            service.traffic.clear()
            service.traffic.append(
                run_v2.TrafficTarget(
                    type_=run_v2.TrafficTargetAllocationType.TRAFFIC_TARGET_ALLOCATION_TYPE_LATEST, percent=100
                )
            )
            operation = self._client.update_service(service=service)
            updated = operation.result(timeout=self._ready_timeout)
        except DeployError:
            raise
        except (gexc.GoogleAPIError, TimeoutError) as exc:
            raise DeployError(f"Cloud Run update of {self._service_name} failed: {exc}") from exc
        ready = updated.latest_ready_revision
        if not ready or ready != updated.latest_created_revision:
            raise DeployError(
                f"revision {updated.latest_created_revision} is not ready (latest ready: {ready or 'none'})"
            )
        wait_until_serving(updated.uri, event.model_version, self._healthz_timeout)
        return Deployed(revision=ready.rsplit("/", 1)[-1], url=updated.uri)


class LocalDeployer:
    """The local stack's router (localdev.router) plays Cloud Run: it starts a predict process on the new
    version, waits until it is healthy, switches traffic to it and drains the old one."""

    def __init__(self, admin_url: str, public_url: str, timeout_s: float = 120.0) -> None:
        self._admin = admin_url.rstrip("/")
        self._public = public_url.rstrip("/")
        self._timeout = timeout_s

    def deploy(self, event: ProductionChanged) -> Deployed:
        body = json.dumps({"model_uri": event.model_uri, "model_version": event.model_version}).encode()
        request = urllib.request.Request(
            f"{self._admin}/revisions", data=body, headers={"Content-Type": "application/json"}, method="POST"
        )
        try:
            with urllib.request.urlopen(request, timeout=self._timeout) as response:
                revision = json.loads(response.read())["revision"]
        except urllib.error.HTTPError as exc:
            raise DeployError(f"the local router refused the revision: {exc.read()[:500]!r}") from exc
        except (urllib.error.URLError, OSError, ValueError, KeyError) as exc:
            raise DeployError(f"the local router at {self._admin} failed: {exc}") from exc
        wait_until_serving(self._public, event.model_version, 30.0)
        return Deployed(revision=revision, url=self._public)
