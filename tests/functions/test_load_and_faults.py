"""Under concurrency every counter (lifetime and per hour) equals the records; a frozen Firestore gives bounded 503s."""

from __future__ import annotations

import random
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from localdev import services
from tests.functions.conftest import (
    STORE_TIMEOUT_S,
    call,
    counted_from_records,
    counters,
    monitoring_from_records,
    window_counted_from_records,
    window_counters,
    window_monitoring,
)

# A client's deadline that only a hung request reaches (predict's own bound is STORE_TIMEOUT_S); how long
# requests take under a freeze is a figure for bench/, not an assertion.
HANG_S = 30.0


def test_2000_concurrent_mixed_requests_keep_every_aggregate_and_window_equal_to_the_records(
    predict_url, feedback_url, clean_db, trained
) -> None:
    made: list[dict] = []
    lock = threading.Lock()
    rng = random.Random(5)
    plan = [rng.random() for _ in range(2000)]

    def one(choice: float) -> int:
        with lock:
            earlier = rng.choice(made) if made else None
        if earlier is None or choice < 0.55:
            extra = {"is_positive_user_answered": choice < 0.1} if choice < 0.2 else {}
            answer = call(predict_url + "/", {"text": f"Review {choice:.6f}: the food was good", **extra})
            if answer.status == 201:
                with lock:
                    made.append(answer.json)
            return answer.status
        request = {
            "prediction_id": earlier["id"],
            "is_positive_user_answered": choice < 0.8,
            "feedback_token": earlier["feedback_token"],
        }
        return call(feedback_url + "/", request).status

    with ThreadPoolExecutor(max_workers=32) as pool:
        statuses = list(pool.map(one, plan))

    assert len(statuses) == 2000
    assert set(statuses) <= {200, 201, 409}
    version = trained["model_version"]
    from_records = counted_from_records(clean_db, version)
    assert counters(clean_db) == {version: from_records}
    assert from_records["predictions"] == statuses.count(201) == len(made)
    statistics = call(feedback_url + "/statistics").json["statistics"]
    assert {k: statistics[k] for k in ("predictions", "feedback", "correct")} == from_records
    windows = window_counters(clean_db)
    assert windows, "every prediction counts in its version's hour"
    for (window_version, hour), counted in windows.items():
        assert counted == window_counted_from_records(clean_db, window_version, hour)
    assert {k: sum(w[k] for w in windows.values()) for k in from_records} == from_records  # no hour missed
    # Monitoring's histograms, confidence and known-fraction sums, written in the same commits, equal the records.
    monitored, recomputed = window_monitoring(clean_db), monitoring_from_records(clean_db)
    assert monitored.keys() == recomputed.keys()
    for window, counted in monitored.items():
        assert (counted.probability, counted.length) == (recomputed[window].probability, recomputed[window].length)
        assert counted.confidence_sum == pytest.approx(recomputed[window].confidence_sum)
        assert counted.known_fraction_count == recomputed[window].known_fraction_count
        assert counted.known_fraction_sum == pytest.approx(recomputed[window].known_fraction_sum)
    assert sum(m.predictions for m in monitored.values()) == from_records["predictions"]
    # The served model reports known_fraction: every prediction counted it.
    assert sum(m.known_fraction_count for m in monitored.values()) == from_records["predictions"]


def test_frozen_firestore_gives_bounded_503s_and_every_201_is_stored(predict_url, firestore_emulator, clean_db) -> None:
    results: list[tuple[int, float, str | None, str | None]] = []
    stop = threading.Event()

    def client() -> None:
        while not stop.is_set():
            started = time.monotonic()
            answer = call(predict_url + "/", {"text": "Tasty noodles."}, timeout=HANG_S)
            elapsed = time.monotonic() - started
            retry_after = answer.headers.get("Retry-After")
            results.append((answer.status, elapsed, (answer.json or {}).get("id"), retry_after))

    threads = [threading.Thread(target=client) for _ in range(8)]
    for thread in threads:
        thread.start()
    time.sleep(1.0)
    with services.frozen(firestore_emulator.pid):
        time.sleep(STORE_TIMEOUT_S * 2.5)
    time.sleep(2.0)
    stop.set()
    for thread in threads:
        thread.join(timeout=60)

    statuses = [r[0] for r in results]
    assert set(statuses) <= {201, 503}
    assert statuses.count(503) > 0, "the freeze should have produced 503s"
    assert statuses.count(201) > 0
    print(
        f"\nslowest answer during the freeze: {max(r[1] for r in results):.2f} s (bound {STORE_TIMEOUT_S} s + overhead)"
    )
    assert all(r[3] for r in results if r[0] == 503), "every 503 carries Retry-After"
    stored = {d.id for d in clean_db.collection("predictions").select([]).stream()}
    assert {r[2] for r in results if r[0] == 201} <= stored
    assert call(predict_url + "/", {"text": "Back to normal."}).status == 201
