"""CKV_SENTIMENT_18: checkov can judge each public invoker binding (CKV2_SENTIMENT_17, public_behind_lb.yaml): one
that names allUsers or allAuthenticatedUsers names the service it opens without an unresolved `each`, and a binding
whose member checkov cannot resolve draws it from no collection that mentions them. Without this, a public binding
made under a for_each that checkov cannot evaluate (a `for` expression) would pass CKV2_SENTIMENT_17 unseen."""

from checkov.common.models.enums import CheckCategories, CheckResult
from checkov.terraform.checks.resource.base_resource_check import BaseResourceCheck

PUBLIC = ("allUsers", "allAuthenticatedUsers")
# The attribute that names the service or function each binding type grants on.
TARGET = {
    "google_cloud_run_v2_service_iam_member": "name",
    "google_cloudfunctions2_function_iam_member": "cloud_function",
}


def _first(conf: dict, key: str) -> str:
    value = conf.get(key) or [""]
    return str(value[0] if isinstance(value, list) else value)


class PublicBindingResolved(BaseResourceCheck):
    def __init__(self) -> None:
        super().__init__(
            name="Every public invoker binding is one checkov resolves (so that CKV2_SENTIMENT_17 can judge it)",
            id="CKV_SENTIMENT_18",
            categories=[CheckCategories.IAM],
            supported_resources=list(TARGET),
        )

    def scan_resource_conf(self, conf: dict) -> CheckResult:
        member = _first(conf, "member")
        target = _first(conf, TARGET[self.entity_type])
        if member in PUBLIC:
            return CheckResult.FAILED if "each." in target else CheckResult.PASSED
        unresolved = "each." in member or "${" in member
        if unresolved and any(name in str(conf.get("for_each", "")) for name in PUBLIC):
            return CheckResult.FAILED
        return CheckResult.PASSED


check = PublicBindingResolved()
