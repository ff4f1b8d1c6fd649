"""The project's own checkov policies (YAML and Python), loaded with --external-checks-dir infra/checkov."""
