"""MLflow Model Registry look-ups, the two writes a rollout makes and the retrain check's run search, over its
REST API.

The watcher needs "which version is in production?" and, when a rollout ends, to move the alias back and tag
versions, so it talks REST with the standard library instead of importing mlflow (1.7 s and 140 MB that a Cloud
Function would pay on every cold start).
"""

from __future__ import annotations

import base64
import dataclasses
import json
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Mapping
from datetime import datetime
from typing import Any

from sentiment_core.contract import LEGACY_PRODUCTION_STAGE, PRODUCTION_ALIAS, PROMOTION_TAG


class RegistryError(RuntimeError):
    """The registry could not be read (network, auth or server error)."""


METADATA_IDENTITY_URL = "http://metadata.google.internal/computeMetadata/v1/instance/service-accounts/default/identity"


class IdTokenSource:
    """Google-signed ID tokens for `audience` from the metadata server, reused for most of their hour.

    An MLflow server on Cloud Run that only IAM-granted principals may invoke wants one in
    `X-Serverless-Authorization`, which leaves `Authorization` to MLflow's own basic auth.
    """

    def __init__(self, audience: str, url: str = METADATA_IDENTITY_URL, timeout_s: float = 2.0) -> None:
        self._query = urllib.parse.urlencode({"audience": audience, "format": "full"})
        self._url = url
        self._timeout = timeout_s
        self._lock = threading.Lock()
        self._token: str | None = None
        self._renew_at = 0.0

    def __call__(self) -> str:
        with self._lock:
            if self._token is None or time.monotonic() >= self._renew_at:
                request = urllib.request.Request(f"{self._url}?{self._query}", headers={"Metadata-Flavor": "Google"})
                try:
                    with urllib.request.urlopen(request, timeout=self._timeout) as response:
                        token = response.read().decode().strip()
                except (urllib.error.URLError, OSError, UnicodeDecodeError) as exc:
                    raise RegistryError(f"no identity token from the metadata server: {exc}") from exc
                if token.count(".") != 2:
                    raise RegistryError("the metadata server did not answer with a token")
                self._token, self._renew_at = token, time.monotonic() + 3000  # tokens live 3600 s
            return self._token


@dataclasses.dataclass(frozen=True)
class ModelVersion:
    """The fields of a registered model version that deployment decisions use."""

    name: str
    version: str
    run_id: str
    source: str
    chosen_by: str  # "alias" or "stage": how the production version was found
    # "automatic" when the version carries the tag promotion=automatic (training's AUTO_PROMOTE=canary set the
    # alias), else None: a person's choice. The deployment history records which.
    promotion: str | None = None

    @classmethod
    def from_api(cls, data: dict[str, Any], chosen_by: str) -> ModelVersion:
        tags = {tag.get("key"): tag.get("value") for tag in data.get("tags") or [] if isinstance(tag, dict)}
        return cls(
            name=data["name"],
            version=str(data["version"]),
            run_id=data.get("run_id", ""),
            source=data.get("source", ""),
            chosen_by=chosen_by,
            promotion="automatic" if tags.get(PROMOTION_TAG) == "automatic" else None,
        )


@dataclasses.dataclass(frozen=True)
class RunInfo:
    """What the deploy gate reads of a training run."""

    run_id: str
    artifact_uri: str
    metrics: dict[str, float]
    tags: dict[str, str]


@dataclasses.dataclass(frozen=True)
class RegistrySettings:
    """How a unit reaches MLflow: MLFLOW_TRACKING_URI, its credentials as MLflow reads them, MLFLOW_IAM_AUDIENCE
    (an identity token for MLflow on Cloud Run behind IAM) and MLFLOW_TIMEOUT_S."""

    tracking_uri: str
    username: str | None = None
    password: str | None = None
    token: str | None = None
    iam_audience: str | None = None
    timeout_s: float = 2.0

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> RegistrySettings:
        from sentiment_core import config

        uri = config.required("MLFLOW_TRACKING_URI", env)
        if not uri.startswith(("http://", "https://")):
            raise config.ConfigError(f"MLFLOW_TRACKING_URI must be http(s), got {uri!r}")
        return cls(
            tracking_uri=uri,
            username=config.optional("MLFLOW_TRACKING_USERNAME", "", env) or None,
            password=config.optional("MLFLOW_TRACKING_PASSWORD", "", env) or None,
            token=config.optional("MLFLOW_TRACKING_TOKEN", "", env) or None,
            iam_audience=config.optional("MLFLOW_IAM_AUDIENCE", "", env) or None,
            timeout_s=config.number("MLFLOW_TIMEOUT_S", 2.0, 0.1, 60.0, env),
        )

    def client(self) -> RegistryClient:
        return RegistryClient(
            self.tracking_uri,
            username=self.username,
            password=self.password,
            token=self.token,
            timeout=self.timeout_s,
            id_token=IdTokenSource(self.iam_audience) if self.iam_audience else None,
        )


class RegistryClient:
    """Minimal client of the MLflow REST API (2.0 paths, served by MLflow 2 and 3)."""

    def __init__(
        self,
        tracking_uri: str,
        *,
        username: str | None = None,
        password: str | None = None,
        token: str | None = None,
        timeout: float = 10.0,
        retries: int = 1,
        backoff_s: float = 0.3,
        id_token: Callable[[], str] | None = None,
        host: str | None = None,
    ) -> None:
        """host: a Host header other than the URI's (a test reaching a local server as Cloud Run's name)."""
        if not tracking_uri.startswith(("http://", "https://")):
            raise ValueError(f"tracking URI must be http(s), got {tracking_uri!r}")
        self._base = tracking_uri.rstrip("/")
        self._timeout = timeout
        self._retries = retries
        self._backoff = backoff_s
        self._id_token = id_token
        self._headers = {"Accept": "application/json"}
        if token:
            self._headers["Authorization"] = f"Bearer {token}"
        elif username:
            basic = base64.b64encode(f"{username}:{password or ''}".encode()).decode()
            self._headers["Authorization"] = f"Basic {basic}"
        if host:
            self._headers["Host"] = host

    def production_version(self, name: str) -> ModelVersion | None:
        """The version in production: alias `production` first, else the newest in stage `Production`."""
        by_alias = self.version_by_alias(name, PRODUCTION_ALIAS)
        if by_alias is not None:
            return by_alias
        return self.latest_version_in_stage(name, LEGACY_PRODUCTION_STAGE)

    def version_by_alias(self, name: str, alias: str) -> ModelVersion | None:
        """The version an alias points at, or None when the alias (or the model) does not exist."""
        query = urllib.parse.urlencode({"name": name, "alias": alias})
        data = self._call("GET", f"/api/2.0/mlflow/registered-models/alias?{query}")
        if data is None:
            return None
        return ModelVersion.from_api(data["model_version"], chosen_by="alias")

    def latest_version_in_stage(self, name: str, stage: str) -> ModelVersion | None:
        """The newest version in a legacy stage, or None."""
        body = {"name": name, "stages": [stage]}
        data = self._call("POST", "/api/2.0/mlflow/registered-models/get-latest-versions", body)
        versions = (data or {}).get("model_versions", [])
        if not versions:
            return None
        newest = max(versions, key=lambda v: int(v["version"]))
        return ModelVersion.from_api(newest, chosen_by="stage")

    def run(self, run_id: str) -> RunInfo:
        """A run's artifact location, latest metric values and tags."""
        query = urllib.parse.urlencode({"run_id": run_id})
        data = self._call("GET", f"/api/2.0/mlflow/runs/get?{query}")
        if data is None:
            raise RegistryError(f"run {run_id} does not exist")
        run = data["run"]
        return RunInfo(
            run_id=run_id,
            artifact_uri=run["info"]["artifact_uri"],
            metrics={m["key"]: float(m["value"]) for m in run.get("data", {}).get("metrics", [])},
            tags={t["key"]: t["value"] for t in run.get("data", {}).get("tags", [])},
        )

    def model_artifact_uri(self, version: ModelVersion) -> str:
        """Where a version's files live: MLflow 3 logged models (`models:/m-...`) or a plain artifact URI."""
        if version.source.startswith("models:/m-"):
            model_id = version.source.removeprefix("models:/")
            data = self._call("GET", f"/api/2.0/mlflow/logged-models/{urllib.parse.quote(model_id)}")
            if data is None:
                raise RegistryError(f"logged model {model_id} does not exist")
            return data["model"]["info"]["artifact_uri"]
        return version.source

    def download(self, artifact_uri: str, relative_path: str, max_bytes: int = 200 * 2**20) -> bytes:
        """One artifact through the tracking server's proxy (`mlflow-artifacts:/...` URIs)."""
        if not artifact_uri.startswith("mlflow-artifacts:/"):
            raise RegistryError(f"cannot fetch {artifact_uri}: only proxied mlflow-artifacts:/ URIs are supported")
        path = artifact_uri.removeprefix("mlflow-artifacts:").lstrip("/").rstrip("/") + "/" + relative_path
        request = urllib.request.Request(
            f"{self._base}/api/2.0/mlflow-artifacts/artifacts/{urllib.parse.quote(path)}", headers=self._with_iam()
        )
        try:
            with urllib.request.urlopen(request, timeout=self._timeout) as response:
                data = response.read(max_bytes + 1)
        except urllib.error.HTTPError as exc:
            if exc.code == 404:
                raise FileNotFoundError(f"{artifact_uri}/{relative_path}") from exc
            raise RegistryError(f"GET artifact {path}: HTTP {exc.code}") from exc
        except (urllib.error.URLError, TimeoutError, OSError) as exc:
            raise RegistryError(f"GET artifact {path}: {exc}") from exc
        if len(data) > max_bytes:
            raise RegistryError(f"{path} is larger than {max_bytes} bytes")
        return data

    def run_with_tag(
        self, experiment: str, key: str, value: str, status: str = "FINISHED", started_after: datetime | None = None
    ) -> str | None:
        """The id of a run of `experiment` (by name) in `status` with tag `key` = `value`, started after
        `started_after` if given; None when there is none (or no such experiment yet)."""
        if "'" in value or "\\" in value or "`" in key:
            # MLflow's filter grammar has no escape for these: refused rather than searched for something else.
            raise ValueError(f"cannot search for tag {key!r} = {value!r}: quotes and backslashes are not searchable")
        if status not in ("RUNNING", "SCHEDULED", "FINISHED", "FAILED", "KILLED"):
            raise ValueError(f"no run status {status!r}")
        query = urllib.parse.urlencode({"experiment_name": experiment})
        found = self._call("GET", f"/api/2.0/mlflow/experiments/get-by-name?{query}")
        if found is None:
            return None
        where = f"tags.`{key}` = '{value}' and attributes.status = '{status}'"
        if started_after is not None:
            where += f" and attributes.start_time > {int(started_after.timestamp() * 1000)}"
        body = {"experiment_ids": [found["experiment"]["experiment_id"]], "filter": where, "max_results": 1}
        runs = (self._call("POST", "/api/2.0/mlflow/runs/search", body) or {}).get("runs", [])
        return runs[0]["info"]["run_id"] if runs else None

    def set_alias(self, name: str, alias: str, version: str) -> None:
        """Point `alias` of model `name` at `version` (MLflow permission EDIT on the model)."""
        body = {"name": name, "alias": alias, "version": str(version)}
        self._write("/api/2.0/mlflow/registered-models/alias", body, f"alias {alias} of {name} v{version}")

    def set_version_tag(self, name: str, version: str, key: str, value: str) -> None:
        """Set tag `key` = `value` on a model version (MLflow permission EDIT on the model)."""
        body = {"name": name, "version": str(version), "key": key, "value": value}
        self._write("/api/2.0/mlflow/model-versions/set-tag", body, f"tag {key} of {name} v{version}")

    def _write(self, path: str, body: dict[str, Any], what: str) -> None:
        # Both writes set a value rather than change one, so the retry of a 5xx in _call cannot apply twice.
        if self._call("POST", path, body) is None:
            raise RegistryError(f"cannot set {what}: the model or version does not exist")

    def _with_iam(self) -> dict[str, str]:
        headers = dict(self._headers)
        if self._id_token is not None:
            headers["X-Serverless-Authorization"] = f"Bearer {self._id_token()}"
        return headers

    def _call(self, method: str, path: str, body: dict[str, Any] | None = None) -> dict[str, Any] | None:
        """A request with bounded retries: a refused connection or a 5xx is tried again, a timeout is not.

        MLflow's own client retries for about four minutes when the server is down; a function cannot wait
        that long, and a timeout has already spent the budget that a retry would need.
        """
        for attempt in range(self._retries + 1):
            try:
                return self._call_once(method, path, body)
            except _Retryable as exc:
                if attempt == self._retries:
                    raise RegistryError(str(exc)) from exc.__cause__
                time.sleep(self._backoff * (attempt + 1))
        raise AssertionError("unreachable")

    def _call_once(self, method: str, path: str, body: dict[str, Any] | None) -> dict[str, Any] | None:
        """One request; None for RESOURCE_DOES_NOT_EXIST, RegistryError for anything else unexpected."""
        headers = self._with_iam()
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        request = urllib.request.Request(self._base + path, data=data, headers=headers, method=method)
        try:
            with urllib.request.urlopen(request, timeout=self._timeout) as response:
                return json.loads(response.read() or b"{}")
        except urllib.error.HTTPError as exc:
            payload = _error_payload(exc)
            message = str(payload.get("message") or exc.reason)
            if exc.code == 404 or payload.get("error_code") == "RESOURCE_DOES_NOT_EXIST":
                return None
            # MLflow answers a missing alias with 400 INVALID_PARAMETER_VALUE, not 404.
            if payload.get("error_code") == "INVALID_PARAMETER_VALUE" and "alias" in message and "not found" in message:
                return None
            if exc.code >= 500:
                raise _Retryable(f"{method} {path}: HTTP {exc.code}: {message}") from exc
            raise RegistryError(f"{method} {path}: HTTP {exc.code}: {message}") from exc
        except TimeoutError as exc:
            raise RegistryError(f"{method} {path}: no answer within {self._timeout:g} s") from exc
        except urllib.error.URLError as exc:
            if isinstance(exc.reason, TimeoutError):
                raise RegistryError(f"{method} {path}: no answer within {self._timeout:g} s") from exc
            raise _Retryable(f"{method} {path}: {exc.reason}") from exc
        except OSError as exc:
            raise _Retryable(f"{method} {path}: {exc}") from exc


class _Retryable(Exception):
    """A failure worth one more try (connection refused or reset, a 5xx)."""


def _error_payload(exc: urllib.error.HTTPError) -> dict[str, Any]:
    try:
        decoded = json.loads(exc.read() or b"{}")
    except (json.JSONDecodeError, OSError):
        return {}
    return decoded if isinstance(decoded, dict) else {}
