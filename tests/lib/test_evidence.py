"""Which client answered: the address the trusted proxies name, its keyed fingerprint, the per-client cap."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta, timezone

import pytest

from sentiment_core import config
from sentiment_core.evidence import (
    DEFAULT_CLIENT_ADDRESS_HOPS,
    DEFAULT_MAX_PER_CLIENT,
    EvidenceSettings,
    client_address,
    client_fingerprint,
    counts_as_evidence,
    evidence_client_id,
)
from sentiment_core.records import Prediction, WindowCounts

SECRET = b"a-secret-of-at-least-16-characters"
DAY = datetime(2030, 1, 1, 10, 30, tzinfo=UTC)


@pytest.mark.parametrize(
    ("forwarded_for", "remote_addr", "hops", "expected"),
    [
        # Google's external Application Load Balancer: <client-ip>,<load-balancer-ip>
        ("203.0.113.7,34.120.1.1", "169.254.1.1", 2, "203.0.113.7"),
        # whatever the client sent comes first and is never believed
        ("10.9.9.9,203.0.113.7,34.120.1.1", "169.254.1.1", 2, "203.0.113.7"),
        ("1.1.1.1, 2.2.2.2, 203.0.113.7, 34.120.1.1", "169.254.1.1", 2, "203.0.113.7"),
        ("  203.0.113.7 ,34.120.1.1", "169.254.1.1", 2, "203.0.113.7"),  # spaces around entries
        # one proxy that appends the peer (the local router's first entry), or three of them
        ("10.9.9.9,203.0.113.7", "127.0.0.1", 1, "203.0.113.7"),
        ("203.0.113.7,10.0.0.1,10.0.0.2", "127.0.0.1", 3, "203.0.113.7"),
        # fewer entries than proxies: the request did not come through them, its header is the client's own
        ("203.0.113.7", "198.51.100.4", 2, "198.51.100.4"),
        ("", "198.51.100.4", 2, "198.51.100.4"),
        (None, "198.51.100.4", 2, "198.51.100.4"),
        # not an address where the proxy writes one: the peer
        ("evil,34.120.1.1", "198.51.100.4", 2, "198.51.100.4"),
        ("203.0.113.7:443,34.120.1.1", "198.51.100.4", 2, "198.51.100.4"),
        # 0 hops: no header is trusted at all
        ("203.0.113.7,34.120.1.1", "198.51.100.4", 0, "198.51.100.4"),
        # IPv6: one /64 network is one client; IPv4-mapped is IPv4
        ("2001:db8:1:2:aaaa::1,34.120.1.1", None, 2, "2001:db8:1:2::/64"),
        ("2001:db8:1:2:ffff:1:2:3,34.120.1.1", None, 2, "2001:db8:1:2::/64"),
        ("2001:db8:1:3::1,34.120.1.1", None, 2, "2001:db8:1:3::/64"),
        ("::ffff:203.0.113.7,34.120.1.1", None, 2, "203.0.113.7"),
        # nothing known
        (None, None, 2, "unknown"),
        (None, "not-an-address", 2, "unknown"),
    ],
)
def test_client_address_from_header_and_peer_is_the_trusted_entry(
    forwarded_for: str | None, remote_addr: str | None, hops: int, expected: str
) -> None:
    assert client_address(forwarded_for, remote_addr, hops) == expected


def test_client_address_forged_prefixes_all_name_the_same_client() -> None:
    forged = {client_address(f"10.0.{i}.1,203.0.113.7,34.120.1.1", "169.254.1.1", 2) for i in range(50)}

    assert forged == {"203.0.113.7"}


def test_client_fingerprint_is_16_hex_characters_without_the_address() -> None:
    fingerprint = client_fingerprint(SECRET, "203.0.113.7", DAY)

    assert re.fullmatch(r"[0-9a-f]{16}", fingerprint)


@pytest.mark.parametrize(
    ("other_address", "other_moment", "other_secret", "same"),
    [
        ("203.0.113.7", DAY.replace(hour=23, minute=59), SECRET, True),  # the same UTC day
        ("203.0.113.7", datetime(2030, 1, 1, 1, 30, tzinfo=timezone(timedelta(hours=2))), SECRET, False),  # Dec 31
        ("203.0.113.7", DAY + timedelta(days=1), SECRET, False),  # the key rotates daily
        ("203.0.113.8", DAY, SECRET, False),
        ("203.0.113.7", DAY, b"another-secret-of-16-characters", False),
        ("203.0.113.7", DAY.replace(tzinfo=None), SECRET, True),  # naive means UTC, as Firestore's timestamps
    ],
)
def test_client_fingerprint_names_one_address_on_one_utc_day_under_one_secret(
    other_address: str, other_moment: datetime, other_secret: bytes, same: bool
) -> None:
    first = client_fingerprint(SECRET, "203.0.113.7", DAY)

    assert (client_fingerprint(other_secret, other_address, other_moment) == first) is same


@pytest.mark.parametrize(
    ("counted_before", "cap", "expected"),
    [(0, 20, True), (19, 20, True), (20, 20, False), (500, 20, False), (0, 1, True), (1, 1, False)],
)
def test_counts_as_evidence_only_under_the_cap(counted_before: int, cap: int, expected: bool) -> None:
    assert counts_as_evidence(counted_before, cap) is expected


def test_evidence_client_id_is_the_window_key_and_the_fingerprint() -> None:
    assert evidence_client_id("7", DAY, "0123456789abcdef") == "7--2030010110--0123456789abcdef"


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({}, EvidenceSettings(DEFAULT_MAX_PER_CLIENT, DEFAULT_CLIENT_ADDRESS_HOPS)),
        ({"EVIDENCE_MAX_PER_CLIENT": "5", "CLIENT_ADDRESS_HOPS": "0"}, EvidenceSettings(5, 0)),
        ({"EVIDENCE_MAX_PER_CLIENT": " 100000 ", "CLIENT_ADDRESS_HOPS": "10"}, EvidenceSettings(100_000, 10)),
    ],
)
def test_evidence_settings_from_env_parse_whole_numbers(env: dict, expected: EvidenceSettings) -> None:
    assert EvidenceSettings.from_env(env) == expected


@pytest.mark.parametrize(
    ("env", "names"),
    [
        ({"EVIDENCE_MAX_PER_CLIENT": "0"}, "EVIDENCE_MAX_PER_CLIENT"),
        ({"EVIDENCE_MAX_PER_CLIENT": "2.5"}, "EVIDENCE_MAX_PER_CLIENT"),
        ({"EVIDENCE_MAX_PER_CLIENT": "many"}, "EVIDENCE_MAX_PER_CLIENT"),
        ({"CLIENT_ADDRESS_HOPS": "-1"}, "CLIENT_ADDRESS_HOPS"),
        ({"CLIENT_ADDRESS_HOPS": "11"}, "CLIENT_ADDRESS_HOPS"),
    ],
)
def test_evidence_settings_out_of_range_name_the_variable(env: dict, names: str) -> None:
    with pytest.raises(config.ConfigError, match=names):
        EvidenceSettings.from_env(env)


def answered(user_answer: bool | None, counted: bool | None) -> Prediction:
    return Prediction("a" * 32, "t", 0.9, True, user_answer, "m", "7", "r", 0.1, DAY, counted_as_evidence=counted)


@pytest.mark.parametrize(
    ("user_answer", "counted", "expected"),
    [
        (True, True, WindowCounts(1, 1, 1, 1, 0, 1, 1)),  # agreed, within the cap
        (False, True, WindowCounts(1, 1, 1, 0, 0, 1, 0)),  # disagreed, within the cap
        (False, False, WindowCounts(1, 1, 1, 0, 0, 0, 0)),  # over the cap: feedback, not evidence
        (True, None, WindowCounts(1, 1, 1, 1, 0, 0, 0)),  # no known client: never evidence
        (None, None, WindowCounts(1, 1, 0, 0, 0, 0, 0)),
    ],
)
def test_window_counts_of_a_record_count_evidence_only_when_it_counted(
    user_answer: bool | None, counted: bool | None, expected: WindowCounts
) -> None:
    assert WindowCounts.of(answered(user_answer, counted)) == expected


@pytest.mark.parametrize(
    ("supplied", "peer"),
    [([], "127.0.0.2"), (["10.0.0.9"], "127.0.0.3"), (["10.0.0.9, 10.0.0.8", "203.0.113.1"], "127.4.5.6")],
)
def test_local_router_header_names_its_peer_at_the_load_balancers_place(supplied: list[str], peer: str) -> None:
    """The local router appends as Google's load balancer does: predict's default finds the peer, never a forgery."""
    from localdev.router import forwarded_for

    header = forwarded_for(supplied, peer, "127.0.0.1")

    assert client_address(header, "127.0.0.1", DEFAULT_CLIENT_ADDRESS_HOPS) == peer
