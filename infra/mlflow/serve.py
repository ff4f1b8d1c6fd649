"""How the MLflow tracking server starts, in the cloud image and in the tests: read named environment variables,
check them, exec `mlflow server` with basic auth on.

One source of truth: infra/mlflow/Dockerfile's ENTRYPOINT runs this file, infra/terraform/mlflow.tf sets the
variables below, and tests/infra/test_mlflow_cloud.py starts the server through it with the same flags.

Variables (required unless a default is given):
  MLFLOW_BACKEND_STORE_URI        SQLAlchemy URI of the tracking store, without its password
  MLFLOW_BACKEND_STORE_PASSWORD   (optional) the database password, put into the URI URL-encoded; the URI
                                  reaches `mlflow server` through its environment, never its command line
                                  (which any process of the container, and a crash report, can read)
  MLFLOW_ARTIFACTS_DESTINATION    where proxied artifacts go (gs://bucket, or a local folder)
  MLFLOW_FLASK_SERVER_SECRET_KEY  CSRF key of the basic-auth app; the same in every worker and instance
  MLFLOW_SERVER_ALLOWED_HOSTS     comma-separated Host headers MLflow answers (wildcards: mlflow-*.run.app)
  MLFLOW_AUTH_CONFIG_PATH         basic_auth.ini: admin user, auth database, default_permission
  MLFLOW_HOST                     interface to bind (default 0.0.0.0)
  PORT                            port to listen on (default 8080; Cloud Run sets it)
  MLFLOW_WORKERS                  server worker processes (default 1)
"""

from __future__ import annotations

import os
import sys
import urllib.parse
from collections.abc import Mapping

REQUIRED = (
    "MLFLOW_BACKEND_STORE_URI",
    "MLFLOW_ARTIFACTS_DESTINATION",
    "MLFLOW_FLASK_SERVER_SECRET_KEY",
    "MLFLOW_SERVER_ALLOWED_HOSTS",
    "MLFLOW_AUTH_CONFIG_PATH",
)


class ConfigError(ValueError):
    """A variable the server needs is missing or wrong."""


def backend_store_uri(uri: str, password: str | None) -> str:
    """The store URI with the password (URL-encoded) after the user name; unchanged without a password."""
    if not password:
        return uri
    parts = urllib.parse.urlsplit(uri)
    if not parts.username or ":" in parts.netloc.split("@")[0]:
        raise ConfigError("MLFLOW_BACKEND_STORE_URI must name a user and no password when a password is given")
    netloc = f"{parts.username}:{urllib.parse.quote(password, safe='')}@{parts.netloc.split('@', 1)[1]}"
    return urllib.parse.urlunsplit(parts._replace(netloc=netloc))


def server_command(env: Mapping[str, str]) -> tuple[list[str], dict[str, str]]:
    """The `mlflow server` command line and environment for these variables; ConfigError naming every missing
    one. The store URI, password included, is in the environment (MLflow's CLI reads MLFLOW_BACKEND_STORE_URI),
    the password variable itself is not passed on."""
    missing = [name for name in REQUIRED if not env.get(name, "").strip()]
    if missing:
        raise ConfigError(f"missing environment variable(s) for the MLflow server: {', '.join(missing)}")
    hosts = [host.strip() for host in env["MLFLOW_SERVER_ALLOWED_HOSTS"].split(",") if host.strip()]
    if "*" in hosts:
        raise ConfigError("MLFLOW_SERVER_ALLOWED_HOSTS must list the hosts, not '*' (DNS rebinding protection)")
    if not os.path.isfile(env["MLFLOW_AUTH_CONFIG_PATH"]):
        raise ConfigError(f"MLFLOW_AUTH_CONFIG_PATH: no file at {env['MLFLOW_AUTH_CONFIG_PATH']}")
    for name, default in (("PORT", "8080"), ("MLFLOW_WORKERS", "1")):
        if not env.get(name, default).isdigit():
            raise ConfigError(f"{name} must be a whole number, got {env[name]!r}")
    argv = [
        sys.executable,
        "-m",
        "mlflow",
        "server",
        "--app-name",
        "basic-auth",
        "--host",
        env.get("MLFLOW_HOST", "0.0.0.0"),
        "--port",
        env.get("PORT", "8080"),
        "--workers",
        env.get("MLFLOW_WORKERS", "1"),
        "--artifacts-destination",
        env["MLFLOW_ARTIFACTS_DESTINATION"],
        "--allowed-hosts",
        ",".join(hosts),
    ]
    child_env = {name: value for name, value in env.items() if name != "MLFLOW_BACKEND_STORE_PASSWORD"}
    child_env["MLFLOW_BACKEND_STORE_URI"] = backend_store_uri(
        env["MLFLOW_BACKEND_STORE_URI"], env.get("MLFLOW_BACKEND_STORE_PASSWORD")
    )
    return argv, child_env


def main() -> None:
    """Exec the server (it becomes PID 1's process and gets Cloud Run's SIGTERM), or exit 2 with the reason."""
    try:
        argv, env = server_command(os.environ)
    except ConfigError as exc:
        sys.stderr.write(f"infra/mlflow/serve.py: {exc}\n")
        raise SystemExit(2) from None
    os.execve(argv[0], argv, env)


if __name__ == "__main__":
    main()
