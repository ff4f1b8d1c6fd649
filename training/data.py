"""Load labelled reviews from Yelp's two public formats, count every line we cannot use, split."""

from __future__ import annotations

import base64
import csv
import dataclasses
import functools
import gzip
import hashlib
import io
import json
import math
import os
import re
import tempfile
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

from sentiment_core import training_data

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA_DIR = REPO_ROOT.parent / "shared" / "data" / "yelp"
# Out-of-domain development sets (`label<TAB>text`, 1 = positive, a header row): for choosing and tuning, never
# for training.
DEFAULT_OOD_DIR = REPO_ROOT.parent / "shared" / "data" / "ood"
DATA_SUFFIXES = training_data.DATA_SUFFIXES
HASH_SUFFIX = ".sha256"  # --exclude-texts files: one lowercase hex sha256 of a UTF-8 text per line
FORMATS = ("yelp_json", "polarity_csv", "labelled_json")
_SHA256 = re.compile(r"[0-9a-f]{64}")

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
    # Texts of --exclude-texts (the deploy gate's evaluation set): dropped so the gate judges unseen text.
    held_out: int = 0
    feedback: bool = False  # from the feedback/ folder: users' answers, weighted by --feedback-weight
    # A gs:// source: the generation read and its base64 MD5, checked against the bytes (training_data.fingerprint).
    generation: str = ""
    md5: str = ""
    examples_of_rejects: list[str] = dataclasses.field(default_factory=list)

    def reject(self, reason: str, line_no: int) -> None:
        setattr(self, reason, getattr(self, reason) + 1)
        if len(self.examples_of_rejects) < 10:
            self.examples_of_rejects.append(f"line {line_no}: {reason}")

    @property
    def rejected(self) -> int:
        return self.malformed + self.empty_text + self.unknown_label + self.duplicate + self.held_out

    def data_object(self) -> training_data.DataObject | None:
        """The bucket object this source was read from (None for a local file): what the fingerprint hashes."""
        if not self.uri.startswith("gs://"):
            return None
        return training_data.DataObject(_split_gcs(self.uri)[1].partition("#")[0], self.generation, self.md5)


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
        totals = {
            "lines": 0,
            "used": 0,
            "malformed": 0,
            "empty_text": 0,
            "unknown_label": 0,
            "duplicate": 0,
            "held_out": 0,
        }
        for report in self.reports:
            for key in totals:
                totals[key] += getattr(report, key)
        totals["positive"] = sum(self.labels)
        totals["negative"] = len(self.labels) - totals["positive"]
        totals["feedback"] = sum(r.used for r in self.reports if r.feedback)
        return totals

    def data_objects(self) -> list[training_data.DataObject] | None:
        """The bucket objects read, when every source is one (else None): the input of the fingerprint."""
        objects = [report.data_object() for report in self.reports]
        if not objects or None in objects:
            return None
        return objects


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
    """Expand folders (local or gs:// prefixes ending in '/') into data files; default to ../shared/data/yelp.

    A gs:// prefix is expanded at any depth, by sentiment_core.training_data's rules: its ood/ and holdout/
    folders are never training data. `gs://bucket/name#generation` is that version of the object."""
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
    """'yelp_json', 'labelled_json' or 'polarity_csv', from the name and the first record (head: the first line).

    JSON lines whose record has a "label" and no "stars" are labelled_json (the feedback export's rows); so is
    every JSON source of a feedback/ folder."""
    name = uri.partition("#")[0].removesuffix(".gz")
    if name.endswith(".csv"):
        return "polarity_csv"
    if not name.endswith((".jsonl", ".json")) and head.lstrip()[:1] != b"{":
        return "polarity_csv"
    if is_feedback(uri):
        return "labelled_json"
    try:
        record = json.loads(head)
    except ValueError:
        return "yelp_json"  # the parser counts the line as malformed
    if isinstance(record, dict) and "label" in record and "stars" not in record:
        return "labelled_json"
    return "yelp_json"


def is_feedback(uri: str) -> bool:
    """A source in a feedback/ folder (the exported answers of users, sentiment_core.training_data)."""
    return f"/{training_data.FEEDBACK_FOLDER}" in "/" + uri.partition("#")[0].removeprefix("gs://")


def text_sha256(text: str) -> str:
    """The hash --exclude-texts lists: sha256 of the stripped text's UTF-8 bytes."""
    return hashlib.sha256(text.strip().encode("utf-8")).hexdigest()


def load_excluded_hashes(uris: Sequence[str]) -> frozenset[str]:
    """The sha256 values of every `.sha256` file the URIs name (a file, a folder or a gs:// prefix)."""
    hashes: set[str] = set()
    for uri in uris:
        for source in _hash_files(uri):
            raw = _read_bytes(source)
            for number, line in enumerate(raw.decode("utf-8", errors="replace").splitlines(), start=1):
                value = line.strip().lower()
                if not value:
                    continue
                if not _SHA256.fullmatch(value):
                    raise DataError(f"{source}:{number}: expected a hex sha256, got {line!r:.80}")
                hashes.add(value)
    return frozenset(hashes)


def _hash_files(uri: str) -> list[str]:
    if uri.startswith("gs://"):
        bucket, name = _split_gcs(uri)
        if name and not name.endswith("/"):
            return [uri]
        try:
            return sorted(
                f"gs://{bucket}/{b.name}"
                for b in gcs_client().list_blobs(bucket, prefix=name or None)
                if b.name.endswith(HASH_SUFFIX)
            )
        except Exception as exc:  # see _read_bytes
            raise DataError(f"cannot list {uri}: {exc}") from exc
    path = Path(uri).expanduser()
    if path.is_dir():
        return [str(p) for p in sorted(path.glob(f"*{HASH_SUFFIX}"))]
    if path.is_file():
        return [str(path)]
    raise DataError(f"{uri} does not exist")


def load_dataset(
    uris: Sequence[str] | None, label_rule: LabelRule = LabelRule(), exclude: frozenset[str] = frozenset()
) -> Dataset:
    """Read every source; duplicate texts keep their first occurrence and are counted, not silently dropped.

    A text whose text_sha256 is in `exclude` is dropped and counted as held_out."""
    texts: list[str] = []
    labels: list[int] = []
    seen: set[str] = set()
    reports = []
    parsers = {"yelp_json": _parse_yelp_json, "polarity_csv": _parse_polarity_csv, "labelled_json": _parse_labelled}
    for uri in resolve_sources(uris):
        raw, generation, md5 = _read_source(uri)
        if uri.partition("#")[0].endswith(".gz"):
            raw = gzip.decompress(raw)
        head = raw.lstrip()[:65536].split(b"\n", 1)[0]
        report = SourceReport(
            uri=uri,
            format=detect_format(uri, head),
            sha256=hashlib.sha256(raw).hexdigest(),
            feedback=is_feedback(uri),
            generation=generation,
            md5=md5,
        )
        for line_no, text, label in parsers[report.format](raw, report, label_rule):
            if exclude and text_sha256(text) in exclude:
                report.reject("held_out", line_no)
                continue
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


def _parse_labelled(raw: bytes, report: SourceReport, rule: LabelRule) -> Iterator[tuple[int, str, int]]:
    """JSON lines {"text": str, "label": 0|1, ...}: the feedback export's rows (docs/retraining.md)."""
    del rule  # already binary
    for line_no, line in _lines(raw, report):
        try:
            record = json.loads(line)
        except ValueError:
            report.reject("malformed", line_no)
            continue
        if not isinstance(record, dict) or not isinstance(record.get("text"), str):
            report.reject("malformed", line_no)
            continue
        label = record.get("label")
        if isinstance(label, bool) or label not in (0, 1):
            report.reject("unknown_label", line_no)
            continue
        text = record["text"].strip()
        if not text:
            report.reject("empty_text", line_no)
            continue
        yield line_no, text, int(label)


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


def feedback_flags(dataset: Dataset) -> list[bool]:
    """Per example, in dataset order: True for an example of a feedback source (for --feedback-weight)."""
    flags: list[bool] = []
    for report in dataset.reports:
        flags.extend([report.feedback] * report.used)
    return flags[: len(dataset.texts)]


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


def load_ood_sets(folder: Path | str) -> dict[str, LabelledTexts]:
    """Every `*.tsv` dev set of folder (local, or a gs:// prefix) by file stem, in name order (the MLflow metric
    ood_<stem>_accuracy)."""
    if str(folder).startswith("gs://"):
        with tempfile.TemporaryDirectory(prefix="ood-") as tmp:
            _download_tsv(str(folder), Path(tmp))
            return load_ood_sets(Path(tmp))
    folder = Path(folder)
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


def _download_tsv(uri: str, folder: Path) -> None:
    """The .tsv objects directly under a gs:// prefix, into folder (a missing prefix leaves it empty)."""
    bucket, prefix = _split_gcs(uri if uri.endswith("/") else uri + "/")
    try:
        for blob in gcs_client().list_blobs(bucket, prefix=prefix or None):
            relative = blob.name[len(prefix) :]
            if relative.endswith(".tsv") and "/" not in relative:
                (folder / relative).write_bytes(_fresh(blob).download_as_bytes())
    except Exception as exc:  # see _read_bytes
        raise DataError(f"cannot read {uri}: {exc}") from exc


def take(values: Sequence, indices: Iterable[int]) -> list:
    """values[i] for every index, as a list."""
    return [values[i] for i in indices]


def _read_source(uri: str) -> tuple[bytes, str, str]:
    """(bytes, generation, MD5) of a source; generation and MD5 "" for a local file.

    The MD5 is the store's (what a listing shows, so the fingerprint matches the retrain check's), checked against
    the bytes read: the fingerprint then describes what training saw. A composite object has none ("")."""
    if not uri.startswith("gs://"):
        return _read_bytes(uri), "", ""
    raw, generation, md5 = _download(uri)
    if md5 and md5 != base64.b64encode(hashlib.md5(raw).digest()).decode():
        raise DataError(f"cannot read {uri}: the bytes read do not match the object's MD5")
    return raw, generation, md5


def _read_bytes(uri: str) -> bytes:
    if uri.startswith("gs://"):
        return _download(uri)[0]
    try:
        return Path(uri).read_bytes()
    except OSError as exc:
        raise DataError(f"cannot read {uri}: {exc}") from exc


def _download(uri: str) -> tuple[bytes, str, str]:
    """(bytes, generation, base64 MD5 as the store reports it) of `gs://bucket/name[#generation]`; a pinned
    generation that is not the one served is an error (the object was replaced and the store keeps no versions)."""
    bucket, name = _split_gcs(uri)
    name, _, pinned = name.partition("#")
    try:
        blob = gcs_client().bucket(bucket).get_blob(name, generation=int(pinned) if pinned else None)
        if blob is None:
            raise DataError(f"cannot read {uri}: no such object")
        # Taken before the download, which rewrites the blob's fields from the response's headers.
        generation, md5 = str(blob.generation or ""), blob.md5_hash or ""
        raw = _fresh(blob).download_as_bytes()  # of blob.generation: a write meanwhile does not change it
    except DataError:
        raise
    except Exception as exc:  # the storage client raises many types; all mean "cannot read"
        raise DataError(f"cannot read {uri}: {exc}") from exc
    if pinned and generation != pinned:
        raise DataError(f"cannot read {uri}: the store serves generation {generation} instead")
    return raw, generation, md5


def _fresh(blob):
    """A handle on the same object and generation without the listing's download link: the client then builds
    the URL from its own endpoint (the GCS emulator records its address in the link at upload time)."""
    return blob.bucket.blob(blob.name, generation=blob.generation)


def _expand_gcs(uri: str) -> list[str]:
    bucket, name = _split_gcs(uri)
    if name and not name.endswith("/"):
        return [uri]
    location = training_data.DataLocation(bucket, name)
    try:
        blobs = gcs_client().list_blobs(bucket, prefix=name or None)
        found = sorted(f"gs://{bucket}/{b.name}" for b in blobs if location.is_training_data(b.name))
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


def gcs_client():
    """The storage client: anonymous against the GCS emulator (STORAGE_EMULATOR_HOST), else the environment's
    credentials. One per emulator host, created on first use."""
    return _gcs_client(os.environ.get("STORAGE_EMULATOR_HOST", ""), os.environ.get("GOOGLE_CLOUD_PROJECT", ""))


@functools.cache
def _gcs_client(emulator_host: str, project: str):
    # Imported here: local training should not pay for (or need credentials for) the GCS client.
    from google.cloud import storage

    if emulator_host:
        from google.auth.credentials import AnonymousCredentials

        return storage.Client(project=project or "local", credentials=AnonymousCredentials())
    return storage.Client(project=project or None)
