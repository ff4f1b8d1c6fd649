"""The deploy gate's own evaluation set: a bounded, deterministic, class-stratified sample of the data's test split,
as JSON lines `{"text", "label"}` (docs/promotion.md, "The watcher's evaluation set").

    python -m training.eval_set --output eval.jsonl            # 2,000 examples of the default data's test split
    python -m training.eval_set --output "$(terraform -chdir=infra/terraform output -raw eval_set_uri)"
    python -m training.eval_set --output eval.jsonl --hashes-output gs://<data bucket>/<prefix>/holdout/eval-set.sha256

The registry watcher scores every candidate on this file, which it reads from a place no training identity can
write: a training run cannot choose the examples it is judged on. The test split is the one training's defaults
hold out (`--val-fraction 0.1 --test-fraction 0.1 --seed 13` over every source), so a default run never trained on
these texts. Torch-free: the local stack imports it at start.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from training import data

DEFAULT_SIZE = 2000
# training.fit.TrainParams' defaults and train.py's split fractions: the split a default training run holds out.
SPLIT_SEED = 13
VAL_FRACTION = 0.1
TEST_FRACTION = 0.1


def sample(texts: Sequence[str], labels: Sequence[int], indices: Sequence[int], size: int) -> list[dict]:
    """Up to `size` of the indexed examples, each class in its share of them, ordered by a hash of the text:
    the same data gives the same sample."""
    by_label: dict[int, list[int]] = {}
    for index in indices:
        by_label.setdefault(labels[index], []).append(index)
    total = sum(len(members) for members in by_label.values())
    chosen: list[int] = []
    for label in sorted(by_label):
        members = sorted(by_label[label], key=lambda i: hashlib.blake2b(texts[i].encode(), digest_size=8).digest())
        chosen.extend(members[: round(size * len(members) / total)] if total > size else members)
    return [{"text": texts[i], "label": int(labels[i])} for i in sorted(chosen)]


def to_jsonl(rows: Sequence[dict]) -> bytes:
    """One JSON object a line, keys in order: the same rows give the same bytes (and sha256)."""
    return "".join(json.dumps(row, ensure_ascii=False, sort_keys=True) + "\n" for row in rows).encode()


def build(sources: Sequence[str] | None = None, size: int = DEFAULT_SIZE) -> bytes:
    """The evaluation set of the data (default: training.data's) as JSON-lines bytes."""
    dataset = data.load_dataset(sources)
    split = data.stratified_split(
        dataset.labels,
        val_fraction=VAL_FRACTION,
        test_fraction=TEST_FRACTION,
        seed=SPLIT_SEED,
        texts=dataset.texts,
    )
    return to_jsonl(sample(dataset.texts, dataset.labels, split.test, size))


def text_hashes(raw: bytes) -> bytes:
    """The sha256 of each evaluation text, one a line in the set's order: what `training.train --exclude-texts`
    reads to keep these texts out of training (the data bucket's holdout/ folder)."""
    texts = [json.loads(line)["text"] for line in raw.decode("utf-8").splitlines() if line.strip()]
    return "".join(data.text_sha256(text) + "\n" for text in texts).encode()


def write(raw: bytes, output: str, replace: bool = False, content_type: str = "application/x-ndjson") -> None:
    """To a local file, or to `gs://bucket/object` with the caller's credentials; an existing object is kept
    unless `replace` (the watcher's bar changes with it: replacing it is a decision, not a side effect)."""
    if not output.startswith("gs://"):
        Path(output).write_bytes(raw)
        return
    from google.api_core import exceptions as gexc

    bucket, _, name = output.removeprefix("gs://").partition("/")
    blob = data.gcs_client().bucket(bucket).blob(name)
    exists = SystemExit(f"{output} exists already: --replace to stage a new evaluation set")
    if not replace and blob.exists(timeout=60):  # the GCS emulator ignores if_generation_match on uploads
        raise exists
    try:
        blob.upload_from_string(raw, content_type=content_type, if_generation_match=None if replace else 0, timeout=120)
    except gexc.PreconditionFailed as exc:  # written meanwhile
        raise exists from exc


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m training.eval_set", description=__doc__.split("\n\n")[0])
    parser.add_argument("--output", required=True, help="the JSON-lines file to write: a path or gs://bucket/object")
    parser.add_argument(
        "--hashes-output",
        default=None,
        metavar="PATH_OR_GS_URI",
        help="also write the sha256 of each evaluation text, one a line (training.train --exclude-texts reads it; "
        "the data bucket's holdout/ folder)",
    )
    parser.add_argument("--replace", action="store_true", help="overwrite existing gs:// objects")
    parser.add_argument("--size", type=int, default=DEFAULT_SIZE, help=f"examples at most (default {DEFAULT_SIZE})")
    parser.add_argument(
        "--data", nargs="*", default=None, help="data files, folders or gs:// prefixes (default: training.data's)"
    )
    args = parser.parse_args(argv)
    raw = build(args.data, args.size)
    write(raw, args.output, args.replace)
    rows = raw.count(b"\n")
    sys.stdout.write(f"{args.output}: {rows} examples, sha256 {hashlib.sha256(raw).hexdigest()}\n")
    if args.hashes_output:
        write(text_hashes(raw), args.hashes_output, args.replace, content_type="text/plain")
        sys.stdout.write(f"{args.hashes_output}: {rows} text hashes\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
