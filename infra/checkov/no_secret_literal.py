"""CKV_SENTIMENT_8: secret values and database passwords come from generated values (random_password and
friends), never from a literal written in the configuration."""

from checkov.common.models.enums import CheckCategories, CheckResult
from checkov.terraform.checks.resource.base_resource_check import BaseResourceCheck

FIELDS = {"google_secret_manager_secret_version": "secret_data", "google_sql_user": "password"}


class NoSecretLiteral(BaseResourceCheck):
    def __init__(self) -> None:
        super().__init__(
            name="Secrets and passwords are generated, not written in the configuration",
            id="CKV_SENTIMENT_8",
            categories=[CheckCategories.SECRETS],
            supported_resources=list(FIELDS),
        )

    def scan_resource_conf(self, conf: dict) -> CheckResult:
        field = FIELDS[self.entity_type]
        value = (conf.get(field) or [""])[0]
        if isinstance(value, str) and ("random_password." in value or "local." in value):
            return CheckResult.PASSED
        return CheckResult.FAILED


check = NoSecretLiteral()
