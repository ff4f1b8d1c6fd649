"""CKV_SENTIMENT_20: every Firestore (datastore) role granted on the project carries an IAM condition on
`resource.name`. Firestore has no per-database binding, so an unconditioned grant reaches every database, the
deployment documents included: a public function could then plant what gets deployed (issue #17)."""

from checkov.common.models.enums import CheckCategories, CheckResult
from checkov.terraform.checks.resource.base_resource_check import BaseResourceCheck


class DatastoreConditioned(BaseResourceCheck):
    def __init__(self) -> None:
        super().__init__(
            name="Every project-level Firestore role is conditioned on one database",
            id="CKV_SENTIMENT_20",
            categories=[CheckCategories.IAM],
            supported_resources=["google_project_iam_member", "google_project_iam_binding"],
        )

    def scan_resource_conf(self, conf: dict) -> CheckResult:
        role = (conf.get("role") or [""])[0]
        if not (isinstance(role, str) and role.startswith("roles/datastore.")):
            return CheckResult.UNKNOWN  # not a Firestore role: nothing to say
        condition = (conf.get("condition") or [{}])[0]
        expression = (condition.get("expression") or [""])[0]
        # Resolved by checkov's graph, or still the reference to iam.tf's local.database_condition.
        if isinstance(expression, str) and ("resource.name" in expression or "database_condition" in expression):
            return CheckResult.PASSED
        return CheckResult.FAILED


check = DatastoreConditioned()
