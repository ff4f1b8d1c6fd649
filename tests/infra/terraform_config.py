"""infra/terraform read offline: every block of its .tf files parsed with python-hcl2, and what the checks
ask of it (locals, resources by type, the roles each service account is granted)."""

from __future__ import annotations

import functools
import re
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[2]
TERRAFORM = REPO_ROOT / "infra" / "terraform"


def unquote(value: Any) -> Any:
    if isinstance(value, str) and len(value) >= 2 and value[0] == value[-1] == '"':
        return value[1:-1]
    return value


@functools.cache
def parsed() -> dict[str, list]:
    """Every top-level block of every .tf file, merged by kind."""
    import hcl2

    blocks: dict[str, list] = {}
    for path in sorted(TERRAFORM.glob("*.tf")):
        for kind, items in hcl2.loads(path.read_text()).items():
            if not kind.startswith("__"):
                blocks.setdefault(kind, []).extend(items)
    return blocks


def locals_() -> dict[str, Any]:
    merged: dict[str, Any] = {}
    for block in parsed().get("locals", []):
        merged.update(block)
    return merged


def resources(kind: str) -> dict[str, dict]:
    found = {}
    for block in parsed().get("resource", []):
        for resource_kind, named in block.items():
            if unquote(resource_kind) == kind:
                found.update({unquote(name): body for name, body in named.items()})
    return found


def functions() -> dict[str, dict[str, Any]]:
    return {name: {k: unquote(v) for k, v in spec.items()} for name, spec in locals_()["functions"].items()}


def name_set(expression: Any) -> set[str]:
    """The names of a literal `toset(["a", "b"])` as python-hcl2 renders it."""
    return set(re.findall(r'"([\w-]+)"', str(expression)))


def public_functions() -> set[str]:
    """The functions allUsers may invoke (locals.tf public_functions)."""
    return name_set(locals_()["public_functions"])


# Google-managed principals the configuration grants roles to, by what their member expression contains.
AGENTS = {
    "google_project_service_identity.pubsub": "pubsub-agent",
    "@serverless-robot-prod.iam.gserviceaccount.com": "cloud-run-agent",
    "group:cloud-storage-analytics@google.com": "storage-access-logs",
    "@gcp-sa-monitoring-notification.iam.gserviceaccount.com": "monitoring-agent",
}


def role_name(expression: str) -> str:
    """A predefined role as written, or a custom role of this configuration by its role_id."""
    custom = re.fullmatch(r"\$\{google_project_iam_custom_role\.(\w+)\.(?:id|name)\}", expression)
    if custom:
        return unquote(resources("google_project_iam_custom_role")[custom.group(1)]["role_id"])
    return expression


def granted_roles() -> dict[str, set[str]]:
    """Principal -> roles, from every IAM resource: the service accounts its member (and for_each) name, and the
    Google agents of AGENTS."""
    accounts = set(locals_()["service_accounts"])
    grants: dict[str, set[str]] = {}
    for block in parsed()["resource"]:
        for named in block.values():
            for body in named.values():
                if "role" not in body or "member" not in body:
                    continue
                expressions = [str(body["member"]), str(body.get("for_each", ""))]
                expressions += [str(locals_()[name]) for e in expressions for name in re.findall(r"local\.(\w+)", e)]
                text = " ".join(expressions)
                named_accounts = set(re.findall(r'google_service_account\.main\["([\w-]+)"\]', text))
                if "google_service_account.main[each" in text:  # accounts listed by name in the for_each data
                    named_accounts |= {a for a in re.findall(r'"([\w-]+)"', text) if a in accounts}
                named_accounts |= {agent for marker, agent in AGENTS.items() if marker in text}
                for account in named_accounts:
                    grants.setdefault(account, set()).add(role_name(unquote(body["role"])))
    return grants
