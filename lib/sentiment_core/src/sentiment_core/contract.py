"""Names marked as contracts in docs/architecture.md: users, docs and checks depend on them."""

from __future__ import annotations

MODEL_NAME = "yelp-sentiment"
PRODUCTION_ALIAS = "production"
LEGACY_PRODUCTION_STAGE = "Production"
# Continuous training (docs/retraining.md): a triggered run's version says which version it challenged and
# whether it beat it; one that training promoted on its own (AUTO_PROMOTE=canary) also carries promotion=automatic.
CHALLENGER_OF_TAG = "challenger_of"
BEATS_CHAMPION_TAG = "beats_champion"
PROMOTION_TAG = "promotion"

INPUT_NAME = "text"
OUTPUT_NAME = "probability"
# Optional second output: the share of each text's tokens the model knows, float [N] (monitoring's unknown-token
# rate). Models exported before it existed have none and still serve.
KNOWN_FRACTION_OUTPUT = "known_fraction"
# Optional outputs that explain an answer (the model is additive: logit = bias + sum of score / divisor over the
# known features). Computed only when fetched; models exported before them still serve, without explanations.
TOKENS_OUTPUT = "tokens"  # string [N, T], right-padded with ""
FEATURE_SCORES_OUTPUT = "feature_scores"  # float [N, 2T - 1]: unigram j's score, then bigram (j, j + 1)'s
# float [N, 2T - 1]: 1 for a feature of the vocabulary (its idf weight for a model trained with idf weights), else 0
FEATURE_KNOWN_OUTPUT = "feature_known"
BIAS_OUTPUT = "bias"  # float [1]: the logit of a text without a known feature
# The divisor, max(sum of feature_known, 1) (the number of known features, exact in float32, for an unweighted
# model), has no output of its own, since declared outputs cost even a run that does not fetch them a little
# (bench/latency.py).
EXPLANATION_OUTPUTS = (TOKENS_OUTPUT, FEATURE_SCORES_OUTPUT, FEATURE_KNOWN_OUTPUT, BIAS_OUTPUT)

MODEL_FILENAME = "model.onnx"
MANIFEST_FILENAME = "manifest.json"
REFERENCE_FILENAME = "reference.json"  # monitoring's reference, staged beside the model

# metadata_props every exported model carries.
META_RUN_ID = "mlflow_run_id"
META_LABEL_RULE = "label_rule"
META_THRESHOLD = "threshold"
META_TRAINING_DATA_SHA256 = "training_data_sha256"
REQUIRED_METADATA = (META_RUN_ID, META_LABEL_RULE, META_THRESHOLD, META_TRAINING_DATA_SHA256)

DEFAULT_THRESHOLD = 0.5

# What a training run logs for the deploy gate to check a candidate against.
RUN_TAG_MODEL_SHA256 = "model_sha256"
GOLDEN_OUTPUTS_ARTIFACT = "deploy_gate/golden_outputs.json"
VALIDATION_ACCURACY_METRIC = "best_val_accuracy"  # of the epoch whose weights were shipped
REFERENCE_ARTIFACT = "monitoring/reference.json"  # sentiment_core.monitoring.Reference of the validation set
CALIBRATION_ERROR_METRIC = "test_expected_calibration_error"  # of the shipped (calibrated) probabilities
BEHAVIOUR_PASS_RATE_METRIC = "behaviour_pass_rate"  # training.behaviour's suite on the exported graph
