"""What monitoring counts per model version and hour, and the statistics it derives: pure, no I/O.

Every prediction adds, in the same commit as its record (firestore_rest.save_predictions), to its version's hourly
window counter: one in a bin of the probability histogram, one in a bin of the text-length histogram, and its
confidence max(p, 1 - p) to a sum. From those, for any window: the population stability index of the
probabilities against a reference histogram, and a label-free accuracy estimate, the mean confidence (what
NannyML's CBPE estimates for binary classification; honest only for calibrated probabilities).
"""

from __future__ import annotations

import bisect
import dataclasses
import math
from collections.abc import Mapping, Sequence
from typing import Any

PROBABILITY_BINS = 20  # equal-width bins of [0, 1]: enough resolution for PSI at a few hundred predictions
# Upper edges (characters, exclusive) of the text-length bins; the last bin is everything longer.
LENGTH_EDGES = (20, 50, 100, 200, 500, 1000, 2000)
LENGTH_BINS = len(LENGTH_EDGES) + 1
PSI_FLOOR = 1e-4  # an empty bin's share, so that a bin seen on one side only adds a large but finite term


def probability_field(index: int) -> str:
    return f"probability_bin_{index:02d}"


def length_field(index: int) -> str:
    return f"length_bin_{index}"


PROBABILITY_FIELDS = tuple(probability_field(i) for i in range(PROBABILITY_BINS))
LENGTH_FIELDS = tuple(length_field(i) for i in range(LENGTH_BINS))
CONFIDENCE_SUM = "confidence_sum"


def probability_bin(probability: float) -> int:
    """The bin of a probability in [0, 1] (1.0 falls in the last bin)."""
    if not 0.0 <= probability <= 1.0 or math.isnan(probability):
        raise ValueError(f"a probability is in [0, 1], got {probability!r}")
    return min(int(probability * PROBABILITY_BINS), PROBABILITY_BINS - 1)


def length_bin(characters: int) -> int:
    return bisect.bisect_right(LENGTH_EDGES, characters)


@dataclasses.dataclass(frozen=True)
class MonitorCounts:
    """Histograms and the confidence sum of some predictions (one window's, or one commit's increments)."""

    probability: tuple[int, ...] = (0,) * PROBABILITY_BINS
    length: tuple[int, ...] = (0,) * LENGTH_BINS
    confidence_sum: float = 0.0

    @classmethod
    def of(cls, probability: float, text: str) -> MonitorCounts:
        histogram = [0] * PROBABILITY_BINS
        histogram[probability_bin(probability)] = 1
        lengths = [0] * LENGTH_BINS
        lengths[length_bin(len(text))] = 1
        return cls(tuple(histogram), tuple(lengths), max(probability, 1.0 - probability))

    def __add__(self, other: MonitorCounts) -> MonitorCounts:
        return MonitorCounts(
            tuple(a + b for a, b in zip(self.probability, other.probability, strict=True)),
            tuple(a + b for a, b in zip(self.length, other.length, strict=True)),
            self.confidence_sum + other.confidence_sum,
        )

    @property
    def predictions(self) -> int:
        return sum(self.probability)

    def increments(self) -> dict[str, int | float]:
        """The counter fields to add (only those that change)."""
        fields: dict[str, int | float] = {
            **{name: n for name, n in zip(PROBABILITY_FIELDS, self.probability, strict=True) if n},
            **{name: n for name, n in zip(LENGTH_FIELDS, self.length, strict=True) if n},
        }
        if self.confidence_sum:
            fields[CONFIDENCE_SUM] = self.confidence_sum
        return fields

    @classmethod
    def from_document(cls, data: Mapping[str, Any]) -> MonitorCounts:
        """A window counter's fields (missing ones are zero: counters written before monitoring existed)."""
        return cls(
            tuple(int(data.get(name, 0)) for name in PROBABILITY_FIELDS),
            tuple(int(data.get(name, 0)) for name in LENGTH_FIELDS),
            float(data.get(CONFIDENCE_SUM, 0.0)),
        )

    def estimated_accuracy(self) -> float | None:
        """The mean confidence: the expected accuracy if the probabilities are calibrated (None: no predictions)."""
        return self.confidence_sum / self.predictions if self.predictions else None


def psi(live: Sequence[int], reference: Sequence[float]) -> float | None:
    """Population stability index of a live histogram against a reference one (counts or shares, same bins):
    sum((l - r) * ln(l / r)) over the bins' shares, empty bins floored at PSI_FLOOR. None without live data.

    Rules of thumb: below 0.1 no shift, 0.1 to 0.2 moderate, above 0.2 a significant shift.
    """
    if len(live) != len(reference):
        raise ValueError(f"histograms of {len(live)} and {len(reference)} bins")
    live_total, reference_total = sum(live), sum(reference)
    if live_total == 0:
        return None
    if reference_total <= 0:
        raise ValueError("the reference histogram is empty")
    total = 0.0
    for live_count, reference_count in zip(live, reference, strict=True):
        live_share = max(live_count / live_total, PSI_FLOOR)
        reference_share = max(reference_count / reference_total, PSI_FLOOR)
        total += (live_share - reference_share) * math.log(live_share / reference_share)
    return total
