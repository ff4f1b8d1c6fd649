import gzip
import json
from pathlib import Path

import pytest

from training import data


def write(path: Path, lines: list[str | bytes]) -> Path:
    path.write_bytes(b"\n".join(line if isinstance(line, bytes) else line.encode() for line in lines) + b"\n")
    return path


def test_load_dataset_yelp_json_counts_every_bad_line(tmp_path: Path) -> None:
    source = write(
        tmp_path / "reviews.jsonl",
        [
            json.dumps({"review_id": "a", "stars": 5.0, "text": "Loved it", "useful": 3}),
            json.dumps({"stars": 1, "text": "Hated it"}),
            json.dumps({"stars": 3, "text": "It was fine"}),
            json.dumps({"stars": 2.0, "text": "Meh"}),
            "{not json",
            json.dumps(["a list"]),
            json.dumps({"stars": 4}),
            json.dumps({"stars": 4, "text": 7}),
            json.dumps({"stars": 9, "text": "out of range"}),
            json.dumps({"stars": "5", "text": "string stars"}),
            json.dumps({"stars": True, "text": "boolean stars"}),
            json.dumps({"stars": 4, "text": "   "}),
            json.dumps({"stars": 5.0, "text": "Loved it"}),
            b"\xff\xfe not utf-8",
            "",
        ],
    )

    dataset = data.load_dataset([str(source)])

    assert dataset.texts == ["Loved it", "Hated it", "It was fine", "Meh"]
    assert dataset.labels == [1, 0, 1, 0]
    (report,) = dataset.reports
    assert report.format == "yelp_json"
    assert (report.lines, report.used) == (14, 4)
    assert (report.malformed, report.unknown_label, report.empty_text, report.duplicate) == (5, 3, 1, 1)
    assert report.rejected + report.used == report.lines
    assert "line 5: malformed" in report.examples_of_rejects


def test_load_dataset_polarity_csv_counts_every_bad_line(tmp_path: Path) -> None:
    source = write(
        tmp_path / "polarity.csv",
        [
            '"1","the food tasted awful ."',
            '"2","great ""value"", friendly staff"',
            '"2","line one\\nline two"',
            '"3","unknown label"',
            '"2",""',
            '"1","unterminated',
            '"1"',
            '"1","a","b"',
            '"2","great ""value"", friendly staff"',
        ],
    )

    dataset = data.load_dataset([str(source)])

    assert dataset.texts == ["the food tasted awful .", 'great "value", friendly staff', "line one\nline two"]
    assert dataset.labels == [0, 1, 1]
    (report,) = dataset.reports
    assert report.format == "polarity_csv"
    assert (report.malformed, report.unknown_label, report.empty_text, report.duplicate) == (3, 1, 1, 1)


def test_load_dataset_label_rule_moves_the_boundary(tmp_path: Path) -> None:
    source = write(tmp_path / "r.jsonl", [json.dumps({"stars": s, "text": f"review {s}"}) for s in (1, 2, 3, 4, 5)])

    default = data.load_dataset([str(source)])
    strict = data.load_dataset([str(source)], data.LabelRule(positive_min_stars=4))

    assert default.labels == [0, 0, 1, 1, 1]
    assert strict.labels == [0, 0, 0, 1, 1]
    assert (default.label_rule.describe(), strict.label_rule.describe()) == ("stars>=3", "stars>=4")


def test_load_dataset_folder_reads_every_data_file_and_gzip(tmp_path: Path) -> None:
    write(tmp_path / "a.csv", ['"2","good"'])
    (tmp_path / "b.jsonl.gz").write_bytes(gzip.compress(json.dumps({"stars": 1, "text": "bad"}).encode()))
    (tmp_path / "README.md").write_text("not data")

    dataset = data.load_dataset([str(tmp_path)])

    assert sorted(zip(dataset.texts, dataset.labels, strict=True)) == [("bad", 0), ("good", 1)]
    assert [Path(r.uri).name for r in dataset.reports] == ["a.csv", "b.jsonl.gz"]


def test_load_dataset_several_sources_digest_depends_on_content(tmp_path: Path) -> None:
    first = write(tmp_path / "a.csv", ['"2","good"'])
    second = write(tmp_path / "b.csv", ['"1","bad"'])
    before = data.load_dataset([str(first), str(second)]).sha256

    write(second, ['"1","worse"'])
    after = data.load_dataset([str(first), str(second)]).sha256

    assert before != after


@pytest.mark.parametrize(
    ("uris", "message"),
    [
        (["/nonexistent/reviews.jsonl"], "does not exist"),
        (["EMPTY_DIR"], "holds no data files"),
        (["ONLY_BAD"], "no usable examples"),
    ],
)
def test_load_dataset_unusable_sources_raise_data_error(tmp_path: Path, uris: list[str], message: str) -> None:
    (tmp_path / "empty").mkdir()
    write(tmp_path / "bad.jsonl", ["{oops", json.dumps({"stars": 4, "text": ""})])
    mapping = {"EMPTY_DIR": str(tmp_path / "empty"), "ONLY_BAD": str(tmp_path / "bad.jsonl")}

    with pytest.raises(data.DataError, match=message):
        data.load_dataset([mapping.get(u, u) for u in uris])


def test_load_dataset_default_is_the_shared_data_folder(default_data_dir: Path) -> None:
    dataset = data.load_dataset(None)

    assert {Path(r.uri).parent for r in dataset.reports} == {default_data_dir}
    assert {Path(r.uri).name for r in dataset.reports} == {"reviews.jsonl", "sentences_polarity.csv"}
    summary = dataset.summary()
    assert summary["lines"] == 178_107
    assert (
        summary["used"] + summary["malformed"] + summary["empty_text"] + summary["unknown_label"] + summary["duplicate"]
        == summary["lines"]
    )


def test_load_dataset_reads_gs_uris_through_the_storage_client(gcs_emulator, monkeypatch, tmp_path: Path) -> None:
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", gcs_emulator.url)
    from google.auth.credentials import AnonymousCredentials
    from google.cloud import storage

    client = storage.Client(project="test", credentials=AnonymousCredentials())
    bucket = client.create_bucket("training-data-gs-test")
    bucket.blob("yelp/part-1.jsonl").upload_from_string(json.dumps({"stars": 5, "text": "superb"}) + "\n")
    bucket.blob("yelp/part-2.csv").upload_from_string('"1","dreadful"\n')
    bucket.blob("yelp/notes.txt").upload_from_string("ignored")

    from_folder = data.load_dataset(["gs://training-data-gs-test/yelp/"])
    single = data.load_dataset(["gs://training-data-gs-test/yelp/part-2.csv"])

    assert sorted(zip(from_folder.texts, from_folder.labels, strict=True)) == [("dreadful", 0), ("superb", 1)]
    assert single.texts == ["dreadful"]
    with pytest.raises(data.DataError, match="cannot read"):
        data.load_dataset(["gs://training-data-gs-test/yelp/missing.csv"])


def test_stratified_split_is_deterministic_disjoint_and_stratified() -> None:
    texts = [f"text {i}" for i in range(1000)]
    labels = [1 if i % 4 else 0 for i in range(1000)]  # 75 % positive

    first = data.stratified_split(labels, val_fraction=0.1, test_fraction=0.2, seed=7, texts=texts)
    again = data.stratified_split(labels, val_fraction=0.1, test_fraction=0.2, seed=7, texts=texts)
    other = data.stratified_split(labels, val_fraction=0.1, test_fraction=0.2, seed=8, texts=texts)

    assert first == again
    assert first.test != other.test
    parts = [set(first.train), set(first.validation), set(first.test)]
    assert sum(len(p) for p in parts) == 1000
    assert set.union(*parts) == set(range(1000))
    assert first.sizes() == {"train": 700, "validation": 100, "test": 200}
    for part in (first.validation, first.test):
        assert sum(labels[i] for i in part) / len(part) == pytest.approx(0.75)


@pytest.mark.parametrize(("val", "test"), [(0.0, 0.1), (0.5, 0.5), (0.1, 1.2)])
def test_stratified_split_bad_fractions_raise(val: float, test: float) -> None:
    with pytest.raises(ValueError, match="fractions"):
        data.stratified_split([0, 1], val_fraction=val, test_fraction=test, seed=1, texts=["a", "b"])


@pytest.mark.parametrize("limit", [None, 3])
def test_review_flags_mark_json_reviews_in_dataset_order(tmp_path: Path, limit: int | None) -> None:
    write(tmp_path / "a.csv", ['"2","good sentence"', '"1","bad sentence"'])
    reviews = [json.dumps({"stars": 5, "text": "a whole review"}), json.dumps({"stars": 1, "text": "x"})]
    write(tmp_path / "b.jsonl", reviews)
    dataset = data.load_dataset([str(tmp_path)])
    if limit is not None:
        dataset.texts, dataset.labels = dataset.texts[:limit], dataset.labels[:limit]

    flags = data.review_flags(dataset)

    assert flags == [False, False, True, True][: len(dataset.texts)]


@pytest.mark.parametrize(
    ("text", "joined"),
    [
        ("i did n't eat it ; it 's cold", "i didn't eat it ; it's cold"),
        (
            "ca n't wait , we 'll be back , i 'm sure they 've improved",
            "can't wait , we'll be back , i'm sure they've improved",
        ),
        ("they 're nice and i 'd go", "they're nice and i'd go"),
        ("the 'soup' was 'special'", "the 'soup' was 'special'"),
        ("I didn't", "I didn't"),
    ],
)
def test_join_contractions_undoes_treebank_splits_only(text: str, joined: str) -> None:
    assert data.join_contractions([text], [0]) == [joined]


def test_join_contractions_negations_only_leaves_other_clitics_split() -> None:
    assert data.join_contractions(["it 's did n't"], [0], negations_only=True) == ["it 's didn't"]


def test_join_contractions_leaves_other_indices_as_given() -> None:
    texts = ["did n't", "did n't", "did n't"]

    assert data.join_contractions(texts, [0, 2]) == ["didn't", "did n't", "didn't"]
    assert texts == ["did n't", "did n't", "did n't"]


@pytest.mark.parametrize(
    ("mode", "texts", "train", "source"),
    [
        ("as-given", ["did n't", "it 's", "ok", "is n't"], [0, 2], [0, 1, 2, 3]),
        ("joined", ["didn't", "it's", "ok", "is n't"], [0, 2], [0, 1, 2, 3]),
        ("both", ["did n't", "it 's", "ok", "is n't", "didn't"], [0, 2, 4], [0, 1, 2, 3, 0]),
        ("both-negations", ["did n't", "it 's", "ok", "is n't", "didn't"], [0, 2, 4], [0, 1, 2, 3, 0]),
    ],
)
def test_with_contractions_modes_never_touch_the_test_split(
    mode: str, texts: list[str], train: list[int], source: list[int]
) -> None:
    split = data.Split(train=[0, 2], validation=[1], test=[3], seed=0)

    result = data.with_contractions(["did n't", "it 's", "ok", "is n't"], split, mode)

    assert result == (texts, train, source)


def test_with_contractions_unknown_mode_raises() -> None:
    split = data.Split(train=[0], validation=[], test=[], seed=0)

    with pytest.raises(ValueError, match="contractions"):
        data.with_contractions(["x"], split, "split")


@pytest.mark.parametrize(
    ("text", "swapped"),
    [
        ("The staff were friendly.", "The staff are friendly."),
        ("the food is great and the fries are hot", "the food was great and the fries were hot"),
        ("Was it good? It IS.", "Is it good? It Was."),
        ("this thesis wasn't island", "this thesis isn't island"),  # whole words (and their "n't") only
    ],
)
def test_swap_tense_swaps_each_copula_as_a_whole_word(text: str, swapped: str) -> None:
    assert data.swap_tense(text) == swapped


def test_with_tense_copies_appends_a_copy_of_each_training_text_with_a_copula_under_its_source() -> None:
    texts = ["it was good", "no copula here", "it is bad", "validation was fine"]

    extended, train_indices, source = data.with_tense_copies(texts, [0, 1, 2], [0, 1, 2, 3])

    assert extended == [*texts, "it is good", "it was bad"]
    assert train_indices == [0, 1, 2, 4, 5]
    assert source == [0, 1, 2, 3, 0, 2]


def test_with_tense_copies_past_copies_present_texts_only() -> None:
    texts = ["it was good", "the staff are friendly", "it isn't bad"]

    extended, train_indices, source = data.with_tense_copies(texts, [0, 1, 2], [0, 1, 2], "past")

    assert extended[3:] == ["the staff were friendly", "it wasn't bad"]
    assert (train_indices, source) == ([0, 1, 2, 3, 4], [0, 1, 2, 1, 2])


@pytest.mark.parametrize("mode", ["as-given", "yes", ""])
def test_training_texts_unknown_tense_copies_mode_raises(mode: str) -> None:
    split = data.Split(train=[0], validation=[], test=[], seed=0)

    with pytest.raises(ValueError, match="tense copies"):
        data.training_texts(["it is"], split, contractions="as-given", tense_copies=mode)


def test_training_texts_applies_contractions_then_tense_copies_and_never_touches_the_test_split() -> None:
    texts = ["it was n't good", "it is fine", "test was n't seen", "validation is here"]
    split = data.Split(train=[0, 1], validation=[3], test=[2], seed=0)

    made = data.training_texts(texts, split, contractions="both-negations", tense_copies="both")

    assert made.texts[:4] == texts
    assert [made.texts[i] for i in made.train] == [
        "it was n't good",
        "it is fine",
        "it wasn't good",
        "it is n't good",
        "it was fine",
        "it isn't good",
    ]
    assert [made.source[i] for i in made.train] == [0, 1, 0, 0, 1, 0]
    assert made.train_is_tense_copy() == [False, False, False, True, True, True]


@pytest.mark.parametrize(
    ("uri", "head", "expected"),
    [
        ("r.jsonl", b'{"stars": 5, "text": "good"}', "yelp_json"),
        ("r.jsonl", b'{"label": 1, "text": "good"}', "labelled_json"),
        ("r.jsonl", b'{"label": 1, "stars": 4, "text": "good"}', "yelp_json"),
        ("r.json.gz", b'{"label": 0, "text": "bad"}', "labelled_json"),
        ("gs://b/p/feedback/export.jsonl#17", b'{"stars": 5, "text": "good"}', "labelled_json"),
        ("r.jsonl", b"{broken", "yelp_json"),
        ("r.csv", b'{"label": 1}', "polarity_csv"),
        ("gs://b/p/s.csv#3", b'"1","bad"', "polarity_csv"),
        ("noext", b'"2","good"', "polarity_csv"),
        ("noext", b'{"label": 1, "text": "x"}', "labelled_json"),
    ],
)
def test_detect_format_from_name_folder_and_first_record(uri: str, head: bytes, expected: str) -> None:
    assert data.detect_format(uri, head) == expected


@pytest.mark.parametrize(
    ("uri", "expected"),
    [
        ("gs://b/p/feedback/x.jsonl#1", True),
        ("gs://b/feedback/x.jsonl", True),
        ("/data/feedback/x.jsonl", True),
        ("feedback/x.jsonl", True),
        ("gs://b/p/yelp/feedback.jsonl", False),
        ("gs://b/p/nofeedback/x.jsonl", False),
    ],
)
def test_is_feedback_only_for_a_feedback_folder(uri: str, expected: bool) -> None:
    assert data.is_feedback(uri) is expected


def test_load_dataset_labelled_json_counts_every_bad_line_and_flags_feedback(tmp_path: Path) -> None:
    (tmp_path / "feedback").mkdir()
    rows = [
        {"text": " lovely staff ", "label": 1, "source": "feedback", "prediction_id": "p1"},
        {"text": "rude waiter", "label": 0, "source": "feedback", "prediction_id": "p2"},
        {"text": "maybe", "label": 2},
        {"text": "yes", "label": True},
        {"text": "   ", "label": 1},
        {"label": 1},
    ]
    feedback = write(tmp_path / "feedback" / "export.jsonl", [*map(json.dumps, rows), "{nope"])
    reviews = write(tmp_path / "reviews.jsonl", [json.dumps({"stars": 1, "text": "awful"})])

    dataset = data.load_dataset([str(feedback), str(reviews)])

    report = dataset.reports[0]
    assert report.format == "labelled_json"
    assert report.feedback
    assert (report.used, report.unknown_label, report.empty_text, report.malformed) == (2, 2, 1, 2)
    assert report.rejected + report.used == report.lines == 7
    assert dataset.texts == ["lovely staff", "rude waiter", "awful"]
    assert dataset.labels == [1, 0, 0]
    assert data.feedback_flags(dataset) == [True, True, False]
    assert dataset.summary()["feedback"] == 2
    assert dataset.data_objects() is None  # local files: no fingerprint


def test_load_dataset_exclude_drops_listed_texts_before_dedup_and_counts_them_per_source(tmp_path: Path) -> None:
    reviews = write(
        tmp_path / "reviews.jsonl",
        [json.dumps({"stars": s, "text": t}) for s, t in [(5, "kept one"), (1, " the gate's text "), (1, "kept two")]],
    )
    sentences = write(tmp_path / "sentences.csv", ['"2","the gate\'s text"', '"1","kept three"'])
    exclude = frozenset({data.text_sha256("the gate's text")})

    dataset = data.load_dataset([str(reviews), str(sentences)], exclude=exclude)

    assert dataset.texts == ["kept one", "kept two", "kept three"]
    assert [(r.held_out, r.duplicate) for r in dataset.reports] == [(1, 0), (1, 0)]
    assert dataset.summary()["held_out"] == 2
    assert all(r.rejected + r.used == r.lines for r in dataset.reports)


def test_text_sha256_is_of_the_stripped_utf8_text() -> None:
    import hashlib

    assert data.text_sha256("  café \n") == hashlib.sha256("café".encode()).hexdigest()


def test_load_excluded_hashes_reads_files_and_folders_of_sha256_files(tmp_path: Path) -> None:
    first, second = data.text_sha256("a"), data.text_sha256("b")
    (tmp_path / "holdout").mkdir()
    write(tmp_path / "holdout" / "eval.sha256", [first, "", second.upper()])
    write(tmp_path / "holdout" / "notes.txt", ["not a hash"])
    single = write(tmp_path / "one.sha256", [first])

    assert data.load_excluded_hashes([str(tmp_path / "holdout")]) == {first, second}
    assert data.load_excluded_hashes([str(single)]) == {first}
    assert data.load_excluded_hashes([]) == frozenset()


@pytest.mark.parametrize("line", ["abc", "z" * 64, data.text_sha256("a") + " extra"])
def test_load_excluded_hashes_bad_line_raises_with_its_place(tmp_path: Path, line: str) -> None:
    path = write(tmp_path / "bad.sha256", [data.text_sha256("a"), line])

    with pytest.raises(data.DataError, match=r"bad.sha256:2: expected a hex sha256"):
        data.load_excluded_hashes([str(path)])


def test_load_excluded_hashes_missing_path_raises(tmp_path: Path) -> None:
    with pytest.raises(data.DataError, match="does not exist"):
        data.load_excluded_hashes([str(tmp_path / "missing")])


def test_source_report_data_object_is_the_pinned_object_read() -> None:
    report = data.SourceReport("gs://bkt/p/yelp/r.jsonl#42", "yelp_json", generation="42", md5="bWQ1")

    assert report.data_object() == data.training_data.DataObject("p/yelp/r.jsonl", "42", "bWQ1")
    assert data.SourceReport("/tmp/r.jsonl", "yelp_json").data_object() is None


def test_load_dataset_reads_a_data_location_pinned_and_records_generation_and_md5(
    gcs_emulator, monkeypatch, tmp_path: Path
) -> None:
    import base64
    import hashlib

    monkeypatch.setenv("STORAGE_EMULATOR_HOST", gcs_emulator.url)
    from google.auth.credentials import AnonymousCredentials
    from google.cloud import storage

    client = storage.Client(project="test", credentials=AnonymousCredentials())
    bucket = client.create_bucket("training-data-location-test")
    review = json.dumps({"stars": 5, "text": "superb"}).encode() + b"\n"
    bucket.blob("d/yelp/deep/part-1.jsonl").upload_from_string(review)
    bucket.blob("d/feedback/export.jsonl").upload_from_string(json.dumps({"text": "meh", "label": 0}) + "\n")
    bucket.blob("d/ood/set.jsonl").upload_from_string(json.dumps({"stars": 1, "text": "never trained on"}) + "\n")
    bucket.blob("d/holdout/eval.sha256").upload_from_string(data.text_sha256("meh") + "\n")
    bucket.blob("d/ood/dev.tsv").upload_from_string("label\ttext\n1\tfine film\n0\tdull film\n")
    generation = str(bucket.get_blob("d/yelp/deep/part-1.jsonl").generation)

    dataset = data.load_dataset(["gs://training-data-location-test/d/"])
    pinned = data.load_dataset([f"gs://training-data-location-test/d/yelp/deep/part-1.jsonl#{generation}"])
    held = data.load_excluded_hashes(["gs://training-data-location-test/d/holdout/"])
    ood = data.load_ood_sets("gs://training-data-location-test/d/ood/")

    assert sorted(dataset.texts) == ["meh", "superb"]  # nothing of ood/ or holdout/
    assert [r.feedback for r in dataset.reports] == [True, False]
    assert pinned.texts == ["superb"]
    assert pinned.reports[0].generation == generation
    assert pinned.reports[0].md5 == base64.b64encode(hashlib.md5(review).digest()).decode()
    assert pinned.data_objects() == [
        data.training_data.DataObject("d/yelp/deep/part-1.jsonl", generation, pinned.reports[0].md5)
    ]
    assert held == {data.text_sha256("meh")}
    assert ood["dev"].labels == [1, 0]
    with pytest.raises(data.DataError, match="serves generation"):
        data.load_dataset([f"gs://training-data-location-test/d/yelp/deep/part-1.jsonl#{int(generation) + 1}"])
