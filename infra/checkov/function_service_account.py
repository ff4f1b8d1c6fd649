"""CKV_SENTIMENT_7: every function runs as a service account the configuration creates for it, never the
default compute account (a function without service_account_email runs as that account)."""

from checkov.common.models.enums import CheckCategories, CheckResult
from checkov.terraform.checks.resource.base_resource_check import BaseResourceCheck


class FunctionServiceAccount(BaseResourceCheck):
    def __init__(self) -> None:
        super().__init__(
            name="Every function runs as a dedicated service account",
            id="CKV_SENTIMENT_7",
            categories=[CheckCategories.IAM],
            supported_resources=["google_cloudfunctions2_function"],
        )

    def scan_resource_conf(self, conf: dict) -> CheckResult:
        service_config = (conf.get("service_config") or [{}])[0]
        account = (service_config.get("service_account_email") or [""])[0]
        if isinstance(account, str) and "google_service_account." in account:
            return CheckResult.PASSED
        return CheckResult.FAILED


check = FunctionServiceAccount()
