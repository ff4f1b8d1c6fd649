"""MLflow's client through Cloud Run's IAM: the training job's Google identity on every request it sends.

The MLflow server on Cloud Run admits only IAM-granted callers, who present a Google-signed ID token in
`X-Serverless-Authorization`; `Authorization` stays MLflow's own basic auth (MLFLOW_TRACKING_USERNAME/PASSWORD,
the `trainer` user). MLflow adds headers through request header provider plugins, registered by the entry point
`mlflow.request_header_provider` of this project's distribution (pyproject.toml; the training image installs it).
Active only when MLFLOW_IAM_AUDIENCE is set (the job's Terraform sets it to MLflow's URL): a local run sends
nothing more. The token comes from the metadata server, renewed before its hour ends (sentiment_core.registry).
"""

from __future__ import annotations

import os

from mlflow.tracking.request_header.abstract_request_header_provider import RequestHeaderProvider

from sentiment_core.registry import METADATA_IDENTITY_URL, IdTokenSource

AUDIENCE_ENV = "MLFLOW_IAM_AUDIENCE"
# Where the ID token comes from: the metadata server on Google Cloud; tests point it at a stand-in.
METADATA_URL_ENV = "MLFLOW_IAM_METADATA_URL"


class CloudRunIdentityHeader(RequestHeaderProvider):
    """`X-Serverless-Authorization: Bearer <ID token for MLFLOW_IAM_AUDIENCE>` on each MLflow request."""

    def __init__(self) -> None:
        self._sources: dict[tuple[str, str], IdTokenSource] = {}

    def in_context(self) -> bool:
        return bool(os.environ.get(AUDIENCE_ENV, "").strip())

    def request_headers(self) -> dict[str, str]:
        key = (os.environ[AUDIENCE_ENV].strip(), os.environ.get(METADATA_URL_ENV, METADATA_IDENTITY_URL))
        if key not in self._sources:  # one source (and its cached token) per audience
            self._sources[key] = IdTokenSource(key[0], url=key[1])
        return {"X-Serverless-Authorization": f"Bearer {self._sources[key]()}"}
