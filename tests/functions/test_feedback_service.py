"""feedback's handlers without a server: errors raised from many threads at once stay apart."""

from __future__ import annotations

import threading

import flask

from sentiment_core import http
from sentiment_core.records import StoreUnavailable
from tests.functions.conftest import load_function_module

service = load_function_module("feedback", "feedback_service")


def test_store_unavailable_from_concurrent_threads_gives_each_its_own_error_and_cause() -> None:
    """Each 503 carries the cause of its own request, not that of whichever thread raised last."""
    app = flask.Flask(__name__)
    barrier = threading.Barrier(8)
    raised: dict[int, http.ApiError] = {}

    class DownStore:
        def __init__(self, n: int) -> None:
            self.n = n

        def statistics(self):
            barrier.wait(timeout=10)  # every thread inside the handler at once
            raise StoreUnavailable(f"store down for request {self.n}")

    def request(n: int) -> None:
        with app.test_request_context("/statistics"):
            try:
                service.handle_statistics(flask.request, lambda: DownStore(n))
            except http.ApiError as error:
                raised[n] = error

    threads = [threading.Thread(target=request, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)

    assert sorted(raised) == list(range(8))
    assert len({id(error) for error in raised.values()}) == 8
    assert {n: str(error.__cause__) for n, error in raised.items()} == {
        n: f"store down for request {n}" for n in range(8)
    }
    assert {(e.status, e.code) for e in raised.values()} == {(503, "store_unavailable")}
