"""docs/openapi.yaml against real responses: schemathesis drives both functions in-process (create_app)."""

from __future__ import annotations

import os
import sys
from datetime import UTC, datetime

import pytest
import schemathesis
import yaml
from hypothesis import HealthCheck, settings
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    negative_data_rejection,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)
from werkzeug.wrappers import Response

from localdev.services import FUNCTIONS_DIR
from sentiment_core.monitoring import Reference
from sentiment_core.store import save_reference
from training.data import REPO_ROOT

SCHEMA = schemathesis.openapi.from_path(REPO_ROOT / "docs" / "openapi.yaml")
# Schema violations only: each must be refused with a 4xx (negative_data_rejection) of the documented JSON shape.
NEGATIVE = schemathesis.openapi.from_path(REPO_ROOT / "docs" / "openapi.yaml")
NEGATIVE.config.generation.update(modes=[GenerationMode.NEGATIVE])
NEGATIVE_CHECKS = [not_a_server_error, negative_data_rejection, content_type_conformance, response_schema_conformance]
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
    response_headers_conformance,
]


@pytest.fixture(scope="module")
def app(function_env: dict, db):
    """Both functions mounted under /api/NAME, as the load balancer serves them; the version that serves has a
    monitoring reference and a recorded drift state, so GET /monitoring answers every field it has."""
    import functions_framework

    saved = dict(os.environ)
    # Read at import (settings) and at first use (the Firestore client). Listing on, as feedback-operator serves
    # it, so that GET /predictions' page is checked too (off, it is the 404 of test_feedback_service.py).
    os.environ.update(function_env | {"PREDICTIONS_LISTING": "on"})
    try:
        predict = functions_framework.create_app("predict", str(FUNCTIONS_DIR / "predict" / "main.py"))
        predict_main = sys.modules["main"]  # feedback's main.py takes this name next
        feedback = functions_framework.create_app("feedback", str(FUNCTIONS_DIR / "feedback" / "main.py"))
        # Create each instance's Firestore client while the emulator's address is in the environment.
        warm_up = predict.test_client().post("/", json={"text": "warm up"})
        assert warm_up.status_code == 201, warm_up.get_data(as_text=True)
        assert feedback.test_client().get("/statistics").status_code == 200
    finally:
        os.environ.clear()
        os.environ.update(saved)
    version = warm_up.get_json()["details"]["model_version"]
    save_reference(db, version, Reference.of([0.1, 0.8, 0.95], ["bad", "good", "great food"], [1.0, 0.5, 1.0], 0.5))
    db.collection("drift_states").document(version).set(
        {"drift": False, "reasons": [], "since": datetime.now(UTC), "model_version": version}
    )
    mounts = {"/api/predict": predict, "/api/feedback": feedback}

    def load_balancer(environ, start_response):
        # The load balancer's URL map (infra/terraform/edge.tf): {origin}/api/NAME/rest reaches function NAME with
        # path /rest ("/" for none).
        path = environ.get("PATH_INFO", "")
        for prefix, function_app in mounts.items():
            if path == prefix or path.startswith(prefix + "/"):
                environ["PATH_INFO"] = path[len(prefix) :] or "/"
                return function_app(environ, start_response)
        return Response("not found", 404)(environ, start_response)

    yield load_balancer
    predict_main._store().close()  # its keep-alive connection to the emulator


def test_openapi_document_lists_every_route() -> None:
    routes = {(op.method.upper(), op.path) for op in (r.ok() for r in SCHEMA.get_all_operations())}

    assert routes == {
        ("POST", "/predict"),
        ("GET", "/predict/healthz"),
        ("POST", "/feedback"),
        ("GET", "/feedback/statistics"),
        ("GET", "/feedback/predictions"),
        ("GET", "/feedback/monitoring"),
    }


def test_openapi_document_refs_all_resolve() -> None:
    """schemathesis validates nothing below a $ref it cannot resolve: a schema misplaced in the document would
    leave its responses unchecked without a word."""
    document = yaml.safe_load((REPO_ROOT / "docs" / "openapi.yaml").read_text())

    def refs(node: object) -> list[str]:
        if isinstance(node, dict):
            own = [node["$ref"]] if "$ref" in node else []
            return own + [r for value in node.values() for r in refs(value)]
        return [r for value in node for r in refs(value)] if isinstance(node, list) else []

    def resolves(ref: str) -> bool:
        node = document
        for part in ref.removeprefix("#/").split("/"):
            if not isinstance(node, dict) or part not in node:
                return False
            node = node[part]
        return True

    found = refs(document)
    assert len(found) > 20
    assert [ref for ref in found if not resolves(ref)] == []


@SCHEMA.parametrize()
@settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck))
def test_responses_conform_to_openapi(case, app) -> None:
    response = case.call(app=app)

    case.validate_response(response, checks=CHECKS)


@NEGATIVE.parametrize()
@settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck))
def test_schema_violations_are_refused_with_4xx_json(case, app) -> None:
    response = case.call(app=app)

    case.validate_response(
        response,
        checks=[not_a_server_error, negative_data_rejection, content_type_conformance, response_schema_conformance],
    )
