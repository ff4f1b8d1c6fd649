"""Each unit parses only its own variables, once, and names the one that is missing or wrong. No server."""

from __future__ import annotations

import pytest

from sentiment_core.config import ConfigError
from tests.functions.conftest import load_function_module, redeploy_module, watcher_module

watcher_service = watcher_module("watcher_service")
redeploy_service = redeploy_module("redeploy_service")
predict_service = load_function_module("predict", "predict_service")

WATCHER = {
    "GOOGLE_CLOUD_PROJECT": "p",
    "MLFLOW_TRACKING_URI": "http://mlflow:5000",
    "MLFLOW_WEBHOOK_SECRET": "webhook-secret-0123456789",
    "SERVING_BUCKET": "gs://serving",
    "EVAL_SET_URI": "gs://eval/yelp-sentiment/eval.jsonl",
}
REDEPLOY = {
    "GOOGLE_CLOUD_PROJECT": "p",
    "PREDICT_SERVICE": "projects/p/locations/l/services/predict",
    "SERVING_BUCKET": "gs://serving",
}
PREDICT = {"GOOGLE_CLOUD_PROJECT": "p", "MODEL_URI": "gs://serving/m/v1/", "FEEDBACK_TOKEN_SECRET": "s" * 16}


def test_watcher_settings_need_no_cloud_run_setting() -> None:
    settings = watcher_service.Settings.from_env(WATCHER)

    assert (settings.state.project, settings.state.model_name) == ("p", "yelp-sentiment")
    assert settings.topic == "projects/p/topics/model-production-changed"
    assert not hasattr(settings, "predict_service")


def test_watcher_settings_evaluation_defaults_and_overrides() -> None:
    default = watcher_service.Settings.from_env(WATCHER)
    chosen = watcher_service.Settings.from_env(
        WATCHER | {"MIN_EVAL_ACCURACY": "0.9", "MAX_EVAL_REGRESSION": "0", "EVAL_SET_URI": "file:///srv/eval.jsonl"}
    )

    assert (default.eval_set_uri, default.evaluation.min_accuracy, default.evaluation.max_regression) == (
        "gs://eval/yelp-sentiment/eval.jsonl",
        0.85,
        0.02,
    )
    assert (chosen.eval_set_uri, chosen.evaluation.min_accuracy, chosen.evaluation.max_regression) == (
        "file:///srv/eval.jsonl",
        0.9,
        0.0,
    )


def test_redeploy_settings_need_no_mlflow_setting_or_secret() -> None:
    settings = redeploy_service.Settings.from_env(REDEPLOY)

    assert (settings.state.project, settings.deployer, settings.predict_service) == (
        "p",
        "cloud_run",
        "projects/p/locations/l/services/predict",
    )
    assert not any(field.startswith(("tracking", "webhook", "mlflow")) for field in vars(settings))
    assert settings.serving_bucket == "serving"  # gs:// or not, as the watcher reads the same variable


@pytest.mark.parametrize(
    ("unit", "env", "message"),
    [
        (
            "watcher",
            {k: v for k, v in WATCHER.items() if k != "MLFLOW_TRACKING_URI"},
            "MLFLOW_TRACKING_URI must be set",
        ),
        ("watcher", WATCHER | {"MLFLOW_WEBHOOK_SECRET": "short"}, "MLFLOW_WEBHOOK_SECRET must be at least 16"),
        ("watcher", WATCHER | {"MIN_VALIDATION_ACCURACY": "high"}, "MIN_VALIDATION_ACCURACY must be a number"),
        ("watcher", WATCHER | {"WEBHOOK_RECEIVER_ONLY": "yes"}, "WEBHOOK_RECEIVER_ONLY must be true or false"),
        ("watcher", {k: v for k, v in WATCHER.items() if k != "EVAL_SET_URI"}, "EVAL_SET_URI must be set"),
        ("watcher", WATCHER | {"EVAL_SET_URI": "gs://eval"}, "EVAL_SET_URI must be gs://BUCKET/OBJECT"),
        ("watcher", WATCHER | {"EVAL_SET_URI": "eval.jsonl"}, "EVAL_SET_URI must be gs://BUCKET/OBJECT"),
        ("watcher", WATCHER | {"MIN_EVAL_ACCURACY": "1.5"}, "MIN_EVAL_ACCURACY must be between 0 and 1"),
        ("watcher", WATCHER | {"MAX_EVAL_REGRESSION": "x"}, "MAX_EVAL_REGRESSION must be a number"),
        ("redeploy", {"PREDICT_SERVICE": "s"}, "GOOGLE_CLOUD_PROJECT must be set"),
        ("redeploy", {"GOOGLE_CLOUD_PROJECT": "p", "SERVING_BUCKET": "b-1"}, "PREDICT_SERVICE must be set"),
        ("redeploy", REDEPLOY | {"DEPLOYER": "kubernetes"}, "DEPLOYER must be one of cloud_run, local"),
        (
            "redeploy",
            {"GOOGLE_CLOUD_PROJECT": "p", "SERVING_BUCKET": "b-1", "DEPLOYER": "local"},
            "LOCAL_ROUTER_URL must be set",
        ),
        ("redeploy", {k: v for k, v in REDEPLOY.items() if k != "SERVING_BUCKET"}, "SERVING_BUCKET must be set"),
        ("redeploy", REDEPLOY | {"SERVING_BUCKET": "gs://b/m/v2"}, "SERVING_BUCKET must be a bucket name"),
    ],
    ids=[
        "watcher-no-mlflow",
        "watcher-short-secret",
        "watcher-bad-accuracy",
        "watcher-bad-receiver-flag",
        "watcher-no-eval-set",
        "watcher-eval-set-bucket-only",
        "watcher-eval-set-relative-path",
        "watcher-eval-accuracy-above-one",
        "watcher-eval-regression-not-a-number",
        "redeploy-no-project",
        "redeploy-cloud-run-no-service",
        "redeploy-unknown-deployer",
        "redeploy-local-no-router",
        "redeploy-no-serving-bucket",
        "redeploy-serving-bucket-with-a-path",
    ],
)
def test_unit_settings_missing_or_malformed_variable_fails_naming_it(unit: str, env: dict, message: str) -> None:
    settings = watcher_service.Settings if unit == "watcher" else redeploy_service.Settings

    with pytest.raises(ConfigError, match=message):
        settings.from_env(env)


@pytest.mark.parametrize(
    ("env", "days"),
    [({}, 30), ({"PREDICTION_RETENTION_DAYS": "1"}, 1), ({"PREDICTION_RETENTION_DAYS": "3650"}, 3650)],
    ids=["default", "one-day", "ten-years"],
)
def test_predict_settings_retention_days_default_and_range(env: dict, days: int) -> None:
    assert predict_service.Settings.from_env(PREDICT | env).retention_days == days


@pytest.mark.parametrize("raw", ["0", "3651", "7.5", "-1", "30d", "", "²", "٣"])
def test_predict_settings_retention_days_not_a_whole_number_in_range_fails_naming_it(raw: str) -> None:
    with pytest.raises(ConfigError, match="PREDICTION_RETENTION_DAYS must be a whole number of days from 1 to 3650"):
        predict_service.Settings.from_env(PREDICT | {"PREDICTION_RETENTION_DAYS": raw})
