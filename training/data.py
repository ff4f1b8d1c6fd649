"""Load labelled reviews from Yelp's two public formats, count every line we cannot use, split."""

from __future__ import annotations

import csv
import dataclasses
import gzip
import hashlib
import io
import json
import math
import re
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA_DIR = REPO_ROOT.parent / "shared" / "data" / "yelp"
# Out-of-domain development sets (`label<TAB>text`, 1 = positive, a header row): for choosing and tuning, never
# for training.
DEFAULT_OOD_DIR = REPO_ROOT.parent / "shared" / "data" / "ood"
DATA_SUFFIXES = (".jsonl", ".json", ".csv", ".jsonl.gz", ".json.gz", ".csv.gz")

# Yelp Review Polarity: 1 = negative, 2 = positive.
_POLARITY_LABELS = {"1": 0, "2": 1}


class DataError(ValueError):
    """The data cannot be used at all (no files, unreadable source, nothing usable)."""


@dataclasses.dataclass(frozen=True)
class LabelRule:
    """Turns Yelp stars into a binary label; recorded with every run and in the model."""

    positive_min_stars: float = 3.0

    def describe(self) -> str:
        return f"stars>={self.positive_min_stars:g}"

    def label(self, stars: float) -> int:
        return int(stars >= self.positive_min_stars)


@dataclasses.dataclass
class SourceReport:
    """What happened to every line of one source."""

    uri: str
    format: str
    sha256: str = ""
    lines: int = 0
    used: int = 0
    malformed: int = 0
    empty_text: int = 0
    unknown_label: int = 0
    duplicate: int = 0
    examples_of_rejects: list[str] = dataclasses.field(default_factory=list)

    def reject(self, reason: str, line_no: int) -> None:
        setattr(self, reason, getattr(self, reason) + 1)
        if len(self.examples_of_rejects) < 10:
            self.examples_of_rejects.append(f"line {line_no}: {reason}")

    @property
    def rejected(self) -> int:
        return self.malformed + self.empty_text + self.unknown_label + self.duplicate


@dataclasses.dataclass
class Dataset:
    """Texts and labels kept in parallel lists (cheap for 10^5-10^6 rows), plus the lineage."""

    texts: list[str]
    labels: list[int]
    reports: list[SourceReport]
    label_rule: LabelRule

    @property
    def sha256(self) -> str:
        """Digest of the raw source bytes, in URI order: the model's training_data_sha256."""
        digest = hashlib.sha256()
        for report in sorted(self.reports, key=lambda r: r.uri):
            digest.update(f"{report.uri}\0{report.sha256}\n".encode())
        return digest.hexdigest()

    def summary(self) -> dict[str, int]:
        totals = {"lines": 0, "used": 0, "malformed": 0, "empty_text": 0, "unknown_label": 0, "duplicate": 0}
        for report in self.reports:
            for key in totals:
                totals[key] += getattr(report, key)
        totals["positive"] = sum(self.labels)
        totals["negative"] = len(self.labels) - totals["positive"]
        return totals


@dataclasses.dataclass(frozen=True)
class Split:
    """Indices into a Dataset for each part; deterministic for a given dataset and seed."""

    train: list[int]
    validation: list[int]
    test: list[int]
    seed: int

    def sizes(self) -> dict[str, int]:
        return {"train": len(self.train), "validation": len(self.validation), "test": len(self.test)}


def resolve_sources(uris: Sequence[str] | None) -> list[str]:
    """Expand folders (local or gs:// prefixes ending in '/') into data files; default to ../shared/data/yelp."""
    if not uris:
        if not DEFAULT_DATA_DIR.is_dir():
            raise DataError(f"no --data given and the default folder {DEFAULT_DATA_DIR} does not exist")
        uris = [str(DEFAULT_DATA_DIR)]
    resolved: list[str] = []
    for uri in uris:
        if uri.startswith("gs://"):
            resolved.extend(_expand_gcs(uri))
            continue
        path = Path(uri).expanduser()
        if path.is_dir():
            files = sorted(p for p in path.iterdir() if p.is_file() and p.name.endswith(DATA_SUFFIXES))
            if not files:
                raise DataError(f"{path} holds no data files ({', '.join(DATA_SUFFIXES)})")
            resolved.extend(str(p) for p in files)
        elif path.is_file():
            resolved.append(str(path))
        else:
            raise DataError(f"{uri} does not exist")
    return resolved


def detect_format(uri: str, head: bytes) -> str:
    """'yelp_json' or 'polarity_csv', from the name, else from the first byte."""
    name = uri.removesuffix(".gz")
    if name.endswith((".jsonl", ".json")):
        return "yelp_json"
    if name.endswith(".csv"):
        return "polarity_csv"
    return "yelp_json" if head.lstrip()[:1] == b"{" else "polarity_csv"


def load_dataset(uris: Sequence[str] | None, label_rule: LabelRule = LabelRule()) -> Dataset:
    """Read every source; duplicate texts keep their first occurrence and are counted, not silently dropped."""
    texts: list[str] = []
    labels: list[int] = []
    seen: set[str] = set()
    reports = []
    for uri in resolve_sources(uris):
        raw = _read_bytes(uri)
        if uri.endswith(".gz"):
            raw = gzip.decompress(raw)
        report = SourceReport(uri=uri, format=detect_format(uri, raw[:64]), sha256=hashlib.sha256(raw).hexdigest())
        parse = _parse_yelp_json if report.format == "yelp_json" else _parse_polarity_csv
        for line_no, text, label in parse(raw, report, label_rule):
            if text in seen:
                report.reject("duplicate", line_no)
                continue
            seen.add(text)
            texts.append(text)
            labels.append(label)
            report.used += 1
        reports.append(report)
    if not texts:
        raise DataError("no usable examples in " + ", ".join(r.uri for r in reports))
    return Dataset(texts=texts, labels=labels, reports=reports, label_rule=label_rule)


def _parse_yelp_json(raw: bytes, report: SourceReport, rule: LabelRule) -> Iterator[tuple[int, str, int]]:
    for line_no, line in _lines(raw, report):
        try:
            record = json.loads(line)
        except ValueError:
            report.reject("malformed", line_no)
            continue
        if not isinstance(record, dict) or not isinstance(record.get("text"), str):
            report.reject("malformed", line_no)
            continue
        stars = record.get("stars")
        if isinstance(stars, bool) or not isinstance(stars, int | float) or not 1 <= stars <= 5:
            report.reject("unknown_label", line_no)
            continue
        text = record["text"].strip()
        if not text:
            report.reject("empty_text", line_no)
            continue
        yield line_no, text, rule.label(stars)


def _parse_polarity_csv(raw: bytes, report: SourceReport, rule: LabelRule) -> Iterator[tuple[int, str, int]]:
    del rule  # polarity labels are already binary
    for line_no, line in _lines(raw, report):
        # One physical line at a time: a stray quote then spoils one line, not the rest of the file.
        try:
            rows = list(csv.reader(io.StringIO(line), strict=True))
        except csv.Error:
            report.reject("malformed", line_no)
            continue
        if len(rows) != 1 or len(rows[0]) != 2:
            report.reject("malformed", line_no)
            continue
        label, text = rows[0]
        if label.strip() not in _POLARITY_LABELS:
            report.reject("unknown_label", line_no)
            continue
        # The original dataset escapes newlines inside reviews as a literal backslash-n.
        text = text.replace("\\n", "\n").strip()
        if not text:
            report.reject("empty_text", line_no)
            continue
        yield line_no, text, _POLARITY_LABELS[label.strip()]


def _lines(raw: bytes, report: SourceReport) -> Iterator[tuple[int, str]]:
    """Non-blank lines, 1-based; lines that are not UTF-8 are counted as malformed."""
    for line_no, line in enumerate(raw.splitlines(), start=1):
        report.lines += 1
        try:
            decoded = line.decode("utf-8")
        except UnicodeDecodeError:
            report.reject("malformed", line_no)
            continue
        if not decoded.strip():
            report.lines -= 1  # a blank line (e.g. at the end of a file) is not a record
            continue
        yield line_no, decoded


def stratified_split(
    labels: Sequence[int], *, val_fraction: float, test_fraction: float, seed: int, texts: Sequence[str]
) -> Split:
    """Split each class separately, ordered by a seeded hash of the text: same data + seed, same split."""
    if not (0 < val_fraction < 1 and 0 < test_fraction < 1 and val_fraction + test_fraction < 1):
        raise ValueError("fractions must be in (0, 1) and leave room for training")
    parts: dict[str, list[int]] = {"train": [], "validation": [], "test": []}
    for label in sorted(set(labels)):
        members = [i for i, y in enumerate(labels) if y == label]
        members.sort(key=lambda i: hashlib.blake2b(f"{seed}\0{texts[i]}".encode(), digest_size=8).digest())
        n_test = math.floor(len(members) * test_fraction)
        n_val = math.floor(len(members) * val_fraction)
        parts["test"].extend(members[:n_test])
        parts["validation"].extend(members[n_test : n_test + n_val])
        parts["train"].extend(members[n_test + n_val :])
    return Split(
        train=sorted(parts["train"]), validation=sorted(parts["validation"]), test=sorted(parts["test"]), seed=seed
    )


def review_flags(dataset: Dataset) -> list[bool]:
    """Per example, in dataset order: True for a full review (Yelp JSON), False for a sentence (polarity CSV)."""
    flags: list[bool] = []
    for report in dataset.reports:
        flags.extend([report.format == "yelp_json"] * report.used)
    return flags[: len(dataset.texts)]  # a --limit run keeps only the first texts


# The polarity sentences come tokenised Penn-Treebank style ("did n't", "it 's"); users write "didn't", "it's".
_SPLIT_CONTRACTION = re.compile(r" (n't|'s|'d|'re|'ve|'ll|'m)\b")
_SPLIT_NEGATION = re.compile(r" (n't)\b")
CONTRACTIONS = ("as-given", "joined", "both", "both-negations")


def join_contractions(texts: Sequence[str], indices: Iterable[int], *, negations_only: bool = False) -> list[str]:
    """A copy of texts with "did n't" -> "didn't", "it 's" -> "it's" (only the first with negations_only) at the
    given indices: the training text then has the tokens raw text has ("did n't" tokenises as `did`, `n`, `'t`,
    "didn't" as `didn`, `'t`, or as one token with --no-split-apostrophes).
    Other texts are unchanged."""
    pattern = _SPLIT_NEGATION if negations_only else _SPLIT_CONTRACTION
    joined = list(texts)
    for i in indices:
        joined[i] = pattern.sub(r"\1", joined[i])
    return joined


def with_contractions(texts: Sequence[str], split: Split, mode: str) -> tuple[list[str], list[int], list[int]]:
    """(texts, training indices, source of each text) for a --contractions mode; the test split stays as given.

    as-given: unchanged. joined: training and validation texts joined. both: training texts as given, plus a
    joined copy of each one that changes, appended (so the model knows "did n't" and "didn't"); both-negations:
    the same for "n't" alone (with --split-apostrophes "it 's" and "it's" tokenise alike, so copying them would
    only re-weight them). `source[i]` is the index of the example text i was made from, for its label and origin.
    """
    if mode not in CONTRACTIONS:
        raise ValueError(f"contractions must be one of {CONTRACTIONS}")
    source = list(range(len(texts)))
    if mode == "as-given":
        return list(texts), list(split.train), source
    if mode == "joined":
        return join_contractions(texts, [*split.train, *split.validation]), list(split.train), source
    joined = join_contractions(texts, split.train, negations_only=mode == "both-negations")
    changed = [i for i in split.train if joined[i] != texts[i]]
    extended = [*texts, *(joined[i] for i in changed)]
    return extended, [*split.train, *range(len(texts), len(extended))], [*source, *changed]


# Copulas: most polarity sentences are from reviews narrated in the past, and the negative ones most of all, so
# "was"/"were" became negative cues ("The staff were friendly." read as negative). "wasn't" -> "isn't" too.
_COPULAS = {
    "past": re.compile(r"\b(is|are)(?=\b|n't\b)", re.IGNORECASE),
    "both": re.compile(r"\b(was|were|is|are)(?=\b|n't\b)", re.IGNORECASE),
}
TENSE_COPIES = ("none", *_COPULAS)
_OTHER_TENSE = {"was": "is", "were": "are", "is": "was", "are": "were"}


def swap_tense(text: str, mode: str = "both") -> str:
    """text with each copula in the other tense ("The staff are friendly." -> "The staff were friendly."); with
    mode "past" only present copulas change."""

    def other(match: re.Match[str]) -> str:
        word = match.group(0)
        swapped = _OTHER_TENSE[word.lower()]
        return swapped.capitalize() if word[0].isupper() else swapped

    return _COPULAS[mode].sub(other, text)


def with_tense_copies(
    texts: Sequence[str], train_indices: Sequence[int], source: Sequence[int], mode: str = "both"
) -> tuple[list[str], list[int], list[int]]:
    """(texts, training indices, source) with a counterfactual copy (Kaushik et al., ICLR 2020) of each training
    text that has a copula the mode changes, appended and trained on under the same label, so the tense of "to be"
    is less evidence of sentiment. "past": a past-tense copy of each present-tense text (praise is also narrated
    in the past); "both": also a present-tense copy of each past-tense one. Validation and test stay as given."""
    if mode not in _COPULAS:
        raise ValueError(f"tense copies must be one of {tuple(_COPULAS)}")
    copied = [i for i in train_indices if _COPULAS[mode].search(texts[i])]
    extended = [*texts, *(swap_tense(texts[i], mode) for i in copied)]
    return (
        extended,
        [*train_indices, *range(len(texts), len(extended))],
        [*source, *(source[i] for i in copied)],
    )


@dataclasses.dataclass(frozen=True)
class TrainingTexts:
    """The texts training.train's --contractions and --tense-copies make of a dataset: every dataset text as given
    (validation and test are read from here), then the copies made of training texts."""

    texts: list[str]
    train: list[int]  # the indices trained on: the training split's, then its copies
    source: list[int]  # per text: the dataset example it was made from (its label and origin)
    tense_copies_from: int  # texts from this index on are tense copies

    def train_is_tense_copy(self) -> list[bool]:
        return [i >= self.tense_copies_from for i in self.train]


def training_texts(texts: Sequence[str], split: Split, *, contractions: str, tense_copies: str) -> TrainingTexts:
    """The texts a run trains on: --contractions' copies (or rewrites), then --tense-copies' copies of those."""
    extended, train_indices, source = with_contractions(texts, split, contractions)
    copies_from = len(extended)
    if tense_copies not in TENSE_COPIES:
        raise ValueError(f"tense copies must be one of {TENSE_COPIES}")
    if tense_copies != "none":
        extended, train_indices, source = with_tense_copies(extended, train_indices, source, tense_copies)
    return TrainingTexts(extended, train_indices, source, copies_from)


@dataclasses.dataclass(frozen=True)
class LabelledTexts:
    texts: list[str]
    labels: list[int]


def load_ood_sets(folder: Path) -> dict[str, LabelledTexts]:
    """Every `*.tsv` dev set of folder by file stem, in name order (the MLflow metric ood_<stem>_accuracy)."""
    if not folder.is_dir():
        raise DataError(f"out-of-domain folder {folder} does not exist")
    sets = {}
    for path in sorted(folder.glob("*.tsv")):
        with path.open(encoding="utf-8", newline="") as handle:
            # Quoted fields: some texts span lines ("...things:\n- We'd need to call ...").
            rows = list(csv.reader(handle, delimiter="\t"))
        texts, labels = [], []
        for number, row in enumerate(rows[1:], start=2):
            if len(row) != 2 or row[0] not in ("0", "1"):
                raise DataError(f"{path}:{number}: expected `0|1<TAB>text`, got {row!r:.80}")
            labels.append(int(row[0]))
            texts.append(row[1])
        if not texts:
            raise DataError(f"{path}: no examples")
        sets[path.stem] = LabelledTexts(texts, labels)
    if not sets:
        raise DataError(f"out-of-domain folder {folder} holds no .tsv file")
    return sets


def take(values: Sequence, indices: Iterable[int]) -> list:
    """values[i] for every index, as a list."""
    return [values[i] for i in indices]


def _read_bytes(uri: str) -> bytes:
    if uri.startswith("gs://"):
        bucket, name = _split_gcs(uri)
        try:
            return _gcs_client().bucket(bucket).blob(name).download_as_bytes()
        except Exception as exc:  # the storage client raises many types; all mean "cannot read"
            raise DataError(f"cannot read {uri}: {exc}") from exc
    try:
        return Path(uri).read_bytes()
    except OSError as exc:
        raise DataError(f"cannot read {uri}: {exc}") from exc


def _expand_gcs(uri: str) -> list[str]:
    bucket, name = _split_gcs(uri)
    if name and not name.endswith("/"):
        return [uri]
    try:
        blobs = _gcs_client().list_blobs(bucket, prefix=name or None)
        found = sorted(f"gs://{bucket}/{b.name}" for b in blobs if b.name.endswith(DATA_SUFFIXES))
    except Exception as exc:  # see _read_bytes
        raise DataError(f"cannot list {uri}: {exc}") from exc
    if not found:
        raise DataError(f"{uri} holds no data files ({', '.join(DATA_SUFFIXES)})")
    return found


def _split_gcs(uri: str) -> tuple[str, str]:
    bucket, _, name = uri.removeprefix("gs://").partition("/")
    if not bucket:
        raise DataError(f"{uri} names no bucket")
    return bucket, name


def _gcs_client():
    # Imported here: local training should not pay for (or need credentials for) the GCS client.
    from google.cloud import storage

    return storage.Client()
