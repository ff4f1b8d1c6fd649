"""Reading named environment variables once, failing fast with a message that says what to set."""

from __future__ import annotations

import os
from collections.abc import Mapping


class ConfigError(RuntimeError):
    """A required setting is missing or malformed."""


def required(name: str, env: Mapping[str, str] | None = None) -> str:
    value = (env if env is not None else os.environ).get(name, "").strip()
    if not value:
        raise ConfigError(f"{name} must be set")
    return value


def optional(name: str, default: str, env: Mapping[str, str] | None = None) -> str:
    return (env if env is not None else os.environ).get(name, default).strip()


def choice(name: str, default: str, allowed: tuple[str, ...], env: Mapping[str, str] | None = None) -> str:
    """One of `allowed` (default when unset); anything else fails with the choices named."""
    value = optional(name, default, env)
    if value not in allowed:
        raise ConfigError(f"{name} must be one of {', '.join(allowed)}, got {value!r}")
    return value


def number(name: str, default: float, low: float, high: float, env: Mapping[str, str] | None = None) -> float:
    raw = optional(name, str(default), env)
    try:
        value = float(raw)
    except ValueError as exc:
        raise ConfigError(f"{name} must be a number, got {raw!r}") from exc
    if not low <= value <= high:
        raise ConfigError(f"{name} must be between {low:g} and {high:g}, got {value:g}")
    return value


def secret(name: str, env: Mapping[str, str] | None = None, min_length: int = 16) -> bytes:
    value = required(name, env)
    if len(value) < min_length:
        raise ConfigError(f"{name} must be at least {min_length} characters")
    return value.encode()
