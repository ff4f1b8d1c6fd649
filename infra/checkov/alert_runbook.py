"""CKV_SENTIMENT_12: every alert policy tells the person it wakes what to do (documentation naming docs/alerts.md)
and notifies the configuration's channels (an empty list without alert_email). A Python check: the graph drops
the documentation of policies made with for_each."""

from checkov.common.models.enums import CheckCategories, CheckResult
from checkov.terraform.checks.resource.base_resource_check import BaseResourceCheck


class AlertRunbook(BaseResourceCheck):
    def __init__(self) -> None:
        super().__init__(
            name="Every alert policy has documentation and notifies the configured channels",
            id="CKV_SENTIMENT_12",
            categories=[CheckCategories.LOGGING],
            supported_resources=["google_monitoring_alert_policy"],
        )

    def scan_resource_conf(self, conf: dict) -> CheckResult:
        documentation = (conf.get("documentation") or [{}])[0]
        content = (documentation.get("content") or [""])[0]
        channels = (conf.get("notification_channels") or [""])[0]
        # Checkov resolves the locals in some resources and not under for_each: either form names the runbook.
        runbook = isinstance(content, str) and ("docs/alerts.md" in content or "local.alert_runbook" in content)
        if runbook and "google_monitoring_notification_channel." in str(channels):
            return CheckResult.PASSED
        return CheckResult.FAILED


check = AlertRunbook()
