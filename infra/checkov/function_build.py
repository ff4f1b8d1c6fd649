"""CKV_SENTIMENT_10: every function is built as a service account the configuration creates (the default build
identity has no roles on organisations created since 2024) into an image repository it creates and grants on."""

from checkov.common.models.enums import CheckCategories, CheckResult
from checkov.terraform.checks.resource.base_resource_check import BaseResourceCheck


class FunctionBuild(BaseResourceCheck):
    def __init__(self) -> None:
        super().__init__(
            name="Every function is built by a dedicated service account into the configuration's repository",
            id="CKV_SENTIMENT_10",
            categories=[CheckCategories.IAM],
            supported_resources=["google_cloudfunctions2_function"],
        )

    def scan_resource_conf(self, conf: dict) -> CheckResult:
        build = (conf.get("build_config") or [{}])[0]
        account = (build.get("service_account") or [""])[0]
        repository = (build.get("docker_repository") or [""])[0]
        if (
            isinstance(account, str)
            and "google_service_account." in account
            and isinstance(repository, str)
            and "google_artifact_registry_repository." in repository
        ):
            return CheckResult.PASSED
        return CheckResult.FAILED


check = FunctionBuild()
