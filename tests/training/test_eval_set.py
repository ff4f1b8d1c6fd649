"""The deploy gate's evaluation set: a bounded, deterministic, stratified sample of the held-out test split."""

from __future__ import annotations

import json
import uuid

import pytest

from training import data, eval_set


def test_eval_set_sample_is_bounded_deterministic_and_keeps_class_shares() -> None:
    texts = [f"review number {i}" for i in range(1000)]
    labels = [int(i % 4 != 0) for i in range(1000)]  # 75% positive

    first = eval_set.sample(texts, labels, range(1000), 200)
    again = eval_set.sample(texts, labels, list(reversed(range(1000))), 200)

    assert first == again
    assert len(first) == 200
    assert sum(row["label"] for row in first) == 150
    assert eval_set.sample(texts, labels, range(10), 200) == [{"text": texts[i], "label": labels[i]} for i in range(10)]


def test_eval_set_default_is_of_the_test_split_training_holds_out(default_data_dir) -> None:
    dataset = data.load_dataset(None)
    split = data.stratified_split(
        dataset.labels,
        val_fraction=eval_set.VAL_FRACTION,
        test_fraction=eval_set.TEST_FRACTION,
        seed=eval_set.SPLIT_SEED,
        texts=dataset.texts,
    )
    rows = [json.loads(line) for line in eval_set.build().splitlines()]

    held_out = {dataset.texts[i] for i in split.test}
    trained_on = {dataset.texts[i] for i in split.train + split.validation}
    assert len(rows) == eval_set.DEFAULT_SIZE
    assert {row["text"] for row in rows} <= held_out
    assert not {row["text"] for row in rows} & trained_on
    assert eval_set.build() == eval_set.to_jsonl(rows)  # the same bytes every time: the same sha256


def test_eval_set_training_defaults_are_the_split_it_names() -> None:
    from training import fit

    assert fit.HyperParams().seed == eval_set.SPLIT_SEED


def test_eval_set_write_to_gcs_keeps_an_existing_set_unless_replaced(gcs_emulator, monkeypatch) -> None:
    from google.auth.credentials import AnonymousCredentials
    from google.cloud import storage

    monkeypatch.setenv("STORAGE_EMULATOR_HOST", gcs_emulator.url)
    monkeypatch.setenv("GOOGLE_CLOUD_PROJECT", "demo-test")
    bucket = storage.Client(project="demo-test", credentials=AnonymousCredentials()).create_bucket(
        f"eval-{uuid.uuid4().hex[:8]}"
    )
    uri = f"gs://{bucket.name}/m/eval.jsonl"

    eval_set.write(b"first\n", uri)
    with pytest.raises(SystemExit, match="--replace"):
        eval_set.write(b"second\n", uri)
    kept = bucket.blob("m/eval.jsonl").download_as_bytes()
    eval_set.write(b"third\n", uri, replace=True)

    assert (kept, bucket.blob("m/eval.jsonl").download_as_bytes()) == (b"first\n", b"third\n")


def test_eval_set_text_hashes_are_what_training_excludes(tmp_path) -> None:
    rows = [{"text": "great tacos", "label": 1}, {"text": "cold fries", "label": 0}]
    raw = eval_set.to_jsonl(rows)
    reviews = tmp_path / "reviews.jsonl"
    reviews.write_text("".join(json.dumps({"stars": s, "text": t}) + "\n" for s, t in [(5, "great tacos"), (2, "ok")]))
    (tmp_path / "hashes.sha256").write_bytes(eval_set.text_hashes(raw))

    dataset = data.load_dataset([str(reviews)], exclude=data.load_excluded_hashes([str(tmp_path / "hashes.sha256")]))

    assert eval_set.text_hashes(raw).decode().split() == [
        data.text_sha256("great tacos"),
        data.text_sha256("cold fries"),
    ]
    assert dataset.texts == ["ok"]


def test_eval_set_main_writes_the_hashes_beside_the_set(tmp_path, capsys) -> None:
    reviews = tmp_path / "reviews.jsonl"
    reviews.write_text("".join(json.dumps({"stars": 1 + i % 5, "text": f"review {i}"}) + "\n" for i in range(200)))

    code = eval_set.main(
        [
            "--output",
            str(tmp_path / "eval.jsonl"),
            "--hashes-output",
            str(tmp_path / "eval.sha256"),
            "--data",
            str(reviews),
        ]
    )

    rows = [json.loads(line) for line in (tmp_path / "eval.jsonl").read_text().splitlines()]
    hashes = (tmp_path / "eval.sha256").read_text().split()
    assert code == 0
    assert hashes == [data.text_sha256(row["text"]) for row in rows]
    assert f"{len(rows)} text hashes" in capsys.readouterr().out
