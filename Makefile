# make install | test | test-fast | demo | up | down | reset | retrain | lint | fmt | bench | lock | deploy | destroy
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip

.PHONY: help install test test-fast demo up down reset retrain lint fmt bench lock clean bundles deploy destroy

help:
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-10s %s\n", $$1, $$2}'

install: $(VENV)/.installed ## create .venv with the pinned dependencies (torch: the CPU wheel)

$(VENV)/.installed: requirements/dev.txt lib/sentiment_core/pyproject.toml pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --disable-pip-version-check -r requirements/dev.txt -e lib/sentiment_core -e .
	touch $@

test: install ## every test: unit, system (real MLflow, emulators) and e2e (the whole stack); the 15 slowest listed
	$(PY) -m pytest --durations=15

test-fast: install ## the unit tier only (no server; under a minute)
	$(PY) -m pytest -m unit --no-cov -q

demo: install ## the whole loop: stack up, train, register, promote, serve, sample; Ctrl-C stops (DETACH=1 returns)
	$(PY) -m localdev.demo $(if $(filter-out 0,$(DETACH)),--detach)

up: install ## start the local stack (emulators, MLflow, functions, router, scheduler, page); URLs in .local/stack.json
	$(PY) -m localdev.stack up

down: ## stop the local stack; its data (Firestore, registry, buckets) stays in .local/ for the next `make up`
	@if test -x $(PY); then $(PY) -m localdev.stack down; fi

retrain: install ## one retrain check now: trains a challenger when the data bucket or the training settings changed (docs/retraining.md)
	$(PY) -m localdev.stack retrain

reset: ## stop the local stack and delete .local/: predictions, feedback, deployments, registry, buckets
	@if test -x $(PY); then $(PY) -m localdev.stack reset; else rm -rf $${LOCAL_STACK_DIR:-.local}; fi

bundles: install ## each function's self-contained deploy bundle in build/functions/<name> (Terraform zips them)
	for f in predict feedback registry_watcher redeploy retrain; do $(PY) -m localdev.bundle $$f build/functions/$$f; done

deploy: install ## the whole Google Cloud deployment, step by step, each skipped when done: PROJECT=... REGION=... [OPERATOR=user:me@example.com] [ALERT_EMAIL=ml-ops@example.com] [DRY_RUN=1]
	$(PY) -m infra.deploy deploy --project "$(PROJECT)" --region "$(REGION)" $(if $(filter-out 0,$(DRY_RUN)),--dry-run) \
	    $(if $(OPERATOR),--operator "$(OPERATOR)") $(if $(ALERT_EMAIL),--alert-email "$(ALERT_EMAIL)")

destroy: install ## tear the deployment down: PROJECT=... REGION=... [DELETE_STATE_BUCKET=1] [YES=1] [DRY_RUN=1]
	$(PY) -m infra.deploy destroy --project "$(PROJECT)" --region "$(REGION)" $(if $(filter-out 0,$(DRY_RUN)),--dry-run) \
	    $(if $(filter-out 0,$(DELETE_STATE_BUCKET)),--delete-state-bucket) $(if $(filter-out 0,$(YES)),--yes) \
	    $(if $(OPERATOR),--operator "$(OPERATOR)") $(if $(ALERT_EMAIL),--alert-email "$(ALERT_EMAIL)")

lint: install ## ruff and terraform fmt
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	terraform fmt -check -recursive infra/terraform

fmt: install
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .
	terraform fmt -recursive infra/terraform

bench: install ## benchmarks: accuracy vs a baseline, cold start, latency, promotion, rollout policy, drift rule (uses .local/models/latest if present)
	$(PY) bench/train_vs_baseline.py
	$(PY) bench/coldstart.py
	$(PY) bench/latency.py
	$(PY) bench/promotion.py
	$(PY) bench/rollout.py
	$(PY) bench/drift.py

lock: ## re-pin requirements/dev.txt from requirements/dev.in, then each deploy unit's hashed lock (functions/*, infra/mlflow, training)
	rm -rf /tmp/lock-venv && $(PYTHON) -m venv /tmp/lock-venv
	/tmp/lock-venv/bin/pip install --quiet -r requirements/dev.in
	( echo '# Training, tests and tooling (the whole lock, pinned; regenerate with `make lock`). torch is the CPU wheel.'; \
	  /tmp/lock-venv/bin/pip freeze | sed 's/+cpu//' ) > requirements/dev.txt
	/tmp/lock-venv/bin/pip install --quiet pip-tools
	@# One lock per deploy unit (each function, the MLflow image, the training image), every package with its hashes, at dev.txt's versions.
	for d in functions/predict functions/feedback functions/registry_watcher functions/redeploy functions/retrain infra/mlflow training; do \
	  CUSTOM_COMPILE_COMMAND="make lock" /tmp/lock-venv/bin/pip-compile --quiet --generate-hashes --allow-unsafe \
	    --strip-extras --no-emit-index-url --no-emit-find-links -c requirements/dev.txt \
	    -o $$d/requirements.txt $$d/requirements.in || exit 1; \
	done

clean: down
	rm -rf $(VENV) .local .pytest_cache .ruff_cache .coverage
