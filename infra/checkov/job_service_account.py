"""CKV_SENTIMENT_21: every Cloud Run job runs as a service account the configuration creates for it (a job without
template.template.service_account runs as the default compute account, which holds Editor on many projects), and
never retries a task on its own: the retrain check retries a failed run with backoff, and records it."""

from checkov.common.models.enums import CheckCategories, CheckResult
from checkov.terraform.checks.resource.base_resource_check import BaseResourceCheck


class JobServiceAccount(BaseResourceCheck):
    def __init__(self) -> None:
        super().__init__(
            name="Every Cloud Run job runs as a dedicated service account, without retries of its own",
            id="CKV_SENTIMENT_21",
            categories=[CheckCategories.IAM],
            supported_resources=["google_cloud_run_v2_job"],
        )

    def scan_resource_conf(self, conf: dict) -> CheckResult:
        execution = (conf.get("template") or [{}])[0]
        task = (execution.get("template") or [{}])[0]
        account = (task.get("service_account") or [""])[0]
        retries = (task.get("max_retries") or [None])[0]
        if isinstance(account, str) and "google_service_account." in account and retries == 0:
            return CheckResult.PASSED
        return CheckResult.FAILED


check = JobServiceAccount()
