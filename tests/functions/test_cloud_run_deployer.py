"""CloudRunDeployer's traffic split against the local Admin API stand-in: by revision name, the candidate tagged,
every change idempotent, and the immediate deploy still moving all traffic to the latest revision."""

from __future__ import annotations

import dataclasses
import functools
import json
import os
from collections.abc import Iterator

import pytest
from google.auth.credentials import AnonymousCredentials
from google.cloud import storage

from sentiment_core import events
from tests.functions.conftest import PROJECT, call, production_changed, redeploy_module
from tests.functions.fake_cloud_run import LATEST, FakeCloudRun

deployers = redeploy_module("deployers")

SERVICE = f"projects/{PROJECT}/locations/europe-west1/services/predict"
FIRST = "predict-00001-abc"  # the fake's first revision, pinned at 100% like after a manual rollback
SHA256 = "0" * 64  # what the staged manifests say and tests.functions.conftest.production_changed announces


@pytest.fixture(scope="module")
def bucket(gcs_emulator) -> Iterator[str]:
    """Versions 1 to 3 staged as the fake's /healthz reads them: a manifest per folder."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("STORAGE_EMULATOR_HOST", gcs_emulator.url)
        patch.setenv("GOOGLE_CLOUD_PROJECT", PROJECT)
        client = storage.Client(project=PROJECT, credentials=AnonymousCredentials())
        created = client.create_bucket(f"traffic-{os.getpid()}")
        for version in ("1", "2", "3"):
            manifest = json.dumps({"model_version": version, "sha256": SHA256})
            created.blob(f"v{version}/manifest.json").upload_from_string(manifest)
        yield created.name


@pytest.fixture
def cloud_run(bucket) -> Iterator[FakeCloudRun]:
    with FakeCloudRun(SERVICE, f"gs://{bucket}/v1") as fake:
        yield fake


@pytest.fixture
def deployer(cloud_run):
    from google.cloud import run_v2

    client = run_v2.ServicesClient(
        credentials=AnonymousCredentials(), transport="rest", client_options={"api_endpoint": cloud_run.url}
    )
    return deployers.CloudRunDeployer(SERVICE, client=client)


def event(bucket: str, version: str, event_id: str | None = None) -> events.ProductionChanged:
    return production_changed(version, f"gs://{bucket}/v{version}", event_id)


def served_version(url: str) -> str:
    return call(f"{url}/healthz").json["model_version"]


def test_deploy_candidate_gives_a_new_tagged_revision_its_share_beside_the_stable_one(
    deployer, cloud_run, bucket
) -> None:
    deployed = deployer.deploy_candidate(event(bucket, "2"), 10)

    candidate = deployed.revision
    assert deployed.split == deployers.Split(stable=FIRST, candidate=candidate, percent=10)
    assert candidate.startswith("predict-v2-")
    assert cloud_run.shares() == {FIRST: 90, candidate: 10}
    assert cloud_run.tags() == {"candidate": candidate}
    assert cloud_run.model_uri(candidate) == f"gs://{bucket}/v2"
    assert cloud_run.model_uri(FIRST) == f"gs://{bucket}/v1"
    assert len(cloud_run.patches) == 1  # the revision and its share in one update
    assert served_version(deployed.url) == "2"  # the tag's URL reaches the candidate directly
    assert served_version(cloud_run.url) == "1"


def test_deploy_candidate_delivered_twice_makes_one_revision(deployer, cloud_run, bucket) -> None:
    first = deployer.deploy_candidate(event(bucket, "2"), 10)

    again = deployer.deploy_candidate(event(bucket, "2"), 10)

    assert again == first
    assert len(cloud_run.patches) == 1
    assert set(cloud_run.revisions) == {FIRST, first.revision}


def test_deploy_candidate_redelivered_after_the_split_moved_sets_its_share_without_a_new_revision(
    deployer, cloud_run, bucket
) -> None:
    first = deployer.deploy_candidate(event(bucket, "2"), 10)

    again = deployer.deploy_candidate(event(bucket, "2"), 50)

    assert again.split == deployers.Split(FIRST, first.revision, 50)
    assert cloud_run.shares() == {FIRST: 50, first.revision: 50}
    assert set(cloud_run.revisions) == {FIRST, first.revision}


def test_set_split_moves_the_share_and_the_same_split_again_changes_nothing(deployer, cloud_run, bucket) -> None:
    candidate = deployer.deploy_candidate(event(bucket, "2"), 10).revision
    split = deployers.Split(FIRST, candidate, 50)

    deployer.set_split(split)
    deployer.set_split(split)

    assert cloud_run.shares() == {FIRST: 50, candidate: 50}
    assert cloud_run.tags() == {"candidate": candidate}
    assert len(cloud_run.patches) == 2
    assert set(cloud_run.revisions) == {FIRST, candidate}  # a traffic change makes no revision


def test_complete_gives_the_candidate_all_traffic_and_drops_the_tag(deployer, cloud_run, bucket) -> None:
    split = deployer.deploy_candidate(event(bucket, "2"), 10).split

    done = deployer.complete(split)
    deployer.complete(split)

    assert done == deployers.Deployed(revision=split.candidate, url=cloud_run.url)
    assert cloud_run.shares() == {split.candidate: 100}
    assert cloud_run.tags() == {}
    assert len(cloud_run.patches) == 2
    assert served_version(cloud_run.url) == "2"


def test_roll_back_gives_the_stable_revision_all_traffic_and_drops_the_candidate(deployer, cloud_run, bucket) -> None:
    split = deployer.deploy_candidate(event(bucket, "2"), 50).split

    back = deployer.roll_back(split)
    deployer.roll_back(split)

    assert back == deployers.Deployed(revision=FIRST, url=cloud_run.url)
    assert cloud_run.shares() == {FIRST: 100}
    assert cloud_run.tags() == {}
    assert len(cloud_run.patches) == 2
    assert served_version(cloud_run.url) == "1"


def test_current_split_reports_the_split_in_place_and_none_with_one_revision(deployer, bucket) -> None:
    assert deployer.current_split() is None
    split = deployer.deploy_candidate(event(bucket, "2"), 10).split
    assert deployer.current_split() == split
    deployer.set_split(deployers.Split(split.stable, split.candidate, 50))
    assert deployer.current_split() == deployers.Split(split.stable, split.candidate, 50)
    deployer.complete(split)
    assert deployer.current_split() is None


def test_deploy_candidate_beside_latest_traffic_takes_the_latest_ready_revision_as_stable(
    deployer, cloud_run, bucket
) -> None:
    stable = deployer.deploy(event(bucket, "2")).revision

    split = deployer.deploy_candidate(event(bucket, "3"), 10).split

    assert split.stable == stable
    assert cloud_run.shares() == {stable: 90, split.candidate: 10}


def test_deploy_candidate_while_another_candidate_is_live_is_a_deploy_error(deployer, cloud_run, bucket) -> None:
    live = deployer.deploy_candidate(event(bucket, "2"), 10).revision

    with pytest.raises(deployers.DeployError, match="already a candidate"):
        deployer.deploy_candidate(event(bucket, "3"), 10)

    assert cloud_run.tags() == {"candidate": live}
    assert len(cloud_run.patches) == 1


def test_version_promoted_again_after_a_roll_back_gets_a_new_revision(deployer, cloud_run, bucket) -> None:
    split = deployer.deploy_candidate(event(bucket, "2"), 10).split
    deployer.roll_back(split)

    again = deployer.deploy_candidate(event(bucket, "2", event_id="e2-again"), 10)

    assert again.revision != split.candidate  # Cloud Run never reuses a revision name
    assert cloud_run.shares() == {FIRST: 90, again.revision: 10}


def test_deploy_after_a_rollout_routes_all_traffic_to_the_latest_revision(deployer, cloud_run, bucket) -> None:
    deployer.deploy_candidate(event(bucket, "2"), 10)

    deployed = deployer.deploy(event(bucket, "3"))

    assert cloud_run.patches[-1]["traffic"] == [{"type": LATEST, "percent": 100}]
    assert cloud_run.shares() == {deployed.revision: 100}
    assert cloud_run.tags() == {}
    assert served_version(cloud_run.url) == "3"


def test_split_naming_a_revision_that_does_not_exist_is_a_deploy_error(deployer, cloud_run) -> None:
    with pytest.raises(deployers.DeployError, match="does not exist"):
        deployer.set_split(deployers.Split(FIRST, "predict-nowhere", 10))

    assert cloud_run.shares() == {FIRST: 100}


@pytest.mark.parametrize(
    ("stable", "candidate", "percent"),
    [("a", "b", 100), ("a", "b", -1), ("a", "b", True), ("a", "b", 10.5), ("a", "a", 10), ("", "b", 10)],
)
def test_split_out_of_range_or_on_one_revision_is_refused(stable, candidate, percent) -> None:
    with pytest.raises(ValueError, match=r"split|percent"):
        deployers.Split(stable, candidate, percent)


def env_of(template: dict) -> dict[str, str]:
    return {v["name"]: v["value"] for v in template["containers"][0]["env"]}


@pytest.mark.parametrize("how", ["deploy", "candidate"])
def test_new_revision_carries_the_events_sha256_and_a_startup_probe_on_healthz(deployer, cloud_run, bucket, how):
    announced = event(bucket, "2")

    if how == "deploy":
        deployer.deploy(announced)
    else:
        deployer.deploy_candidate(announced, 10)

    (patch,) = cloud_run.patches
    assert env_of(patch["template"]) == {"MODEL_URI": f"gs://{bucket}/v2", "MODEL_SHA256": SHA256}
    probe = patch["template"]["containers"][0]["startupProbe"]
    assert probe["httpGet"]["path"] == "/healthz"
    assert int(probe["failureThreshold"]) * int(probe["periodSeconds"]) >= 60  # room for a cold start's model load


def test_redeploying_replaces_model_sha256_rather_than_adding_a_second_one(deployer, cloud_run, bucket) -> None:
    deployer.deploy(event(bucket, "2"))
    deployer.deploy(event(bucket, "3"))

    names = [v["name"] for v in cloud_run.patches[-1]["template"]["containers"][0]["env"]]
    assert sorted(names) == ["MODEL_SHA256", "MODEL_URI"]


@pytest.mark.parametrize("how", ["deploy", "candidate"])
def test_revision_whose_model_differs_from_its_sha256_never_takes_traffic(deployer, cloud_run, bucket, how) -> None:
    """predict refuses the file, its startup probe fails, Cloud Run never makes the revision ready: the deploy
    fails and the serving revision keeps all the traffic."""
    swapped = dataclasses.replace(event(bucket, "2"), sha256="f" * 64)

    move = deployer.deploy if how == "deploy" else functools.partial(deployer.deploy_candidate, percent=10)

    with pytest.raises(deployers.DeployError, match="startup probe"):
        move(swapped)

    assert cloud_run.shares() == {FIRST: 100}
    assert cloud_run.tags() == {}
    assert served_version(cloud_run.url) == "1"
