"""Which client answered, without storing who: the client's address, its keyed fingerprint, the per-client cap.

Anyone may answer for the predictions they made, and an answer shows which version replied, so one script could
steer a rollout (or poison exported training data) by answering many of its own predictions. Each answer is
therefore stored with a fingerprint of the client's address, and the rollout's evidence counts at most
EVIDENCE_MAX_PER_CLIENT answers of one client per window (a model version and a UTC hour); docs/promotion.md
("Evidence one client cannot forge") has the threat and the figures. Pure functions, no I/O.

- The address: behind Google's external Application Load Balancer every request arrives with `X-Forwarded-For:
  [<supplied-value>,]<client-ip>,<load-balancer-ip>`; only the last two entries are the load balancer's own, the
  rest is whatever the client sent. CLIENT_ADDRESS_HOPS says which entry, counted from the right, is the client
  (2 there); 0 trusts no header and takes the socket's peer. IPv6 clients count by their /64 network, the block
  one subscriber is usually given, or one machine could be 2^64 clients.
- The fingerprint: HMAC-SHA256 of the address under a key derived from FEEDBACK_TOKEN_SECRET and the UTC day,
  16 hex characters. The key rotates daily with nothing stored, so fingerprints of different days cannot be
  linked, and without the secret no fingerprint can be traced back to an address by trying all 2^32 of them.
"""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import ipaddress
from collections.abc import Mapping
from datetime import UTC, datetime

from sentiment_core import config
from sentiment_core.records import window_key

DEFAULT_MAX_PER_CLIENT = 20
DEFAULT_CLIENT_ADDRESS_HOPS = 2  # Google's external Application Load Balancer appends <client-ip>,<lb-ip>
MAX_CLIENT_ADDRESS_HOPS = 10
FINGERPRINT_CHARS = 16
IPV6_CLIENT_PREFIX = 64
# `evidence_clients/{version}--{YYYYMMDDHH}--{fingerprint}`: `counted`, the answers of that client counted as
# evidence for that version's predictions of that hour; written with the answer, only while under the cap.
EVIDENCE_CLIENTS = "evidence_clients"
_CONTEXT = b"yelp-sentiment client fingerprint v1\0"


@dataclasses.dataclass(frozen=True)
class EvidenceSettings:
    """EVIDENCE_MAX_PER_CLIENT and CLIENT_ADDRESS_HOPS of predict and feedback (both record answers)."""

    max_per_client: int = DEFAULT_MAX_PER_CLIENT
    client_address_hops: int = DEFAULT_CLIENT_ADDRESS_HOPS

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> EvidenceSettings:
        """ConfigError names the variable to fix."""
        cap = config.number("EVIDENCE_MAX_PER_CLIENT", DEFAULT_MAX_PER_CLIENT, 1, 100_000, env)
        hops = config.number("CLIENT_ADDRESS_HOPS", DEFAULT_CLIENT_ADDRESS_HOPS, 0, MAX_CLIENT_ADDRESS_HOPS, env)
        for name, value in (("EVIDENCE_MAX_PER_CLIENT", cap), ("CLIENT_ADDRESS_HOPS", hops)):
            if not value.is_integer():
                raise config.ConfigError(f"{name} must be a whole number, got {value:g}")
        return cls(max_per_client=int(cap), client_address_hops=int(hops))


DEFAULT_EVIDENCE = EvidenceSettings()


def client_address(forwarded_for: str | None, remote_addr: str | None, hops: int) -> str:
    """The client's address: the `hops`-th X-Forwarded-For entry from the right, else the socket's peer.

    The peer too when the header has fewer entries than `hops` or a non-address there: such a request did not
    come through the proxies the setting trusts, so nothing in its header can be believed. Normalised (IPv6 to
    its /64 network, IPv4-mapped IPv6 to IPv4) so that one client has one spelling; "unknown" when there is none.
    """
    if hops > 0 and forwarded_for:
        entries = [entry.strip() for entry in forwarded_for.split(",")]
        if len(entries) >= hops:
            chosen = _normalised(entries[-hops])
            if chosen is not None:
                return chosen
    return _normalised(remote_addr or "") or "unknown"


def _normalised(raw: str) -> str | None:
    try:
        address = ipaddress.ip_address(raw)
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return str(address.ipv4_mapped)
        return str(ipaddress.IPv6Network((address, IPV6_CLIENT_PREFIX), strict=False))
    return str(address)


def client_fingerprint(secret: bytes, address: str, moment: datetime) -> str:
    """16 hex characters that name the client at `address` on the UTC day of `moment`, and nothing else."""
    day = moment.astimezone(UTC).date().isoformat() if moment.tzinfo else moment.date().isoformat()
    day_key = hmac.new(secret, _CONTEXT + day.encode(), hashlib.sha256).digest()
    return hmac.new(day_key, address.encode(), hashlib.sha256).hexdigest()[:FINGERPRINT_CHARS]


def evidence_client_id(version: str, moment: datetime, fingerprint: str) -> str:
    """The id of the client's cap counter for `version`'s predictions of the UTC hour of `moment`."""
    return f"{window_key(version, moment)}--{fingerprint}"


# How many times an answer may lose the race for its client's cap counter before it is stored without counting as
# evidence: one client's burst of answers must not turn into 503s, and the cap is an upper bound, so counting one
# answer fewer is safe where counting one more is not.
MAX_CONTENDED = 3


def counts_as_evidence(counted_before: int, max_per_client: int) -> bool:
    """Whether one more answer of a client counts as evidence, given how many of its answers already count."""
    return counted_before < max_per_client
