"""Cold start of predict: process start to first 201, medians over fresh processes, against two baselines.

    .venv/bin/python bench/coldstart.py [--model STAGED_DIR] [--runs 5]

(a) predict as shipped (onnxruntime), (b) the same handler serving the PyTorch model of the same checkpoint,
(c) a bare functions-framework function. All three store nothing but (a) and (b), which write to a local
Firestore emulator as in production. Also prints the installed size of predict's requirements against the same
plus torch. Targets: (a)/(b) <= 0.35, (a) - (c) <= 300 ms, size ratio <= 0.3.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from importlib import metadata
from pathlib import Path

from _common import REPO_ROOT, predict_env, staged_model

from localdev import services
from localdev.bundle import requirements_of, resolve

PREDICT_DIR = REPO_ROOT / "functions" / "predict"

TORCH_MAIN = '''
"""predict's own wiring and handler, with the model backend swapped for PyTorch (benchmark only)."""
import sys
sys.path.insert(0, {predict_dir!r})
import predict_model

class TorchModel:
    def __init__(self, manifest):
        from training.model import load_checkpoint
        self.model, self.vocabulary = load_checkpoint({checkpoint!r})
        self.manifest = manifest

    def infer(self, texts):
        from training.model import predict_proba
        from training.preprocess import tokenize
        tokens = tokenize(texts, pattern=self.vocabulary.token_pattern)
        return predict_proba(self.model, self.vocabulary.encode(tokens)), None

def load(uri):
    from sentiment_core.manifest import read_staged_folder
    manifest, _ = read_staged_folder(__import__("pathlib").Path(uri))
    return TorchModel(manifest)

predict_model.load = load
import importlib.util  # noqa: E402

# predict's own main.py (entry point, wiring, handler), loaded under another name than this file's.
_spec = importlib.util.spec_from_file_location("predict_main", {predict_dir!r} + "/main.py")
_module = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_module)
predict = _module.predict
'''

BARE_MAIN = """
import functions_framework

@functions_framework.http
def predict(request):
    return ("{}", 201, {"Content-Type": "application/json"})
"""


def first_201(source: Path, env: dict[str, str], workdir: Path) -> float:
    """Seconds from Popen to the first 201 answer to POST /."""
    port = services.free_port()
    argv = [
        str(services.VENV_BIN / "functions-framework"),
        "--source",
        str(source),
        "--target",
        "predict",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
    ]
    body = json.dumps({"text": "Great food and friendly staff."}).encode()
    started = time.perf_counter()
    log = (workdir / f"cold-{port}.log").open("wb")
    process = subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        while time.perf_counter() - started < 60:
            request = urllib.request.Request(
                f"http://127.0.0.1:{port}/", data=body, headers={"Content-Type": "application/json"}
            )
            try:
                with urllib.request.urlopen(request, timeout=30) as response:
                    if response.status == 201:
                        return time.perf_counter() - started
            except (urllib.error.URLError, ConnectionError):
                time.sleep(0.005)
        raise RuntimeError(f"{source} never answered 201; see {log.name}")
    finally:
        services.stop(process.pid)
        process.wait()
        log.close()


def installed_size(requirements: list[str]) -> int:
    """Bytes on disk of the installed distributions that these requirements pull in (from this venv)."""
    names = resolve(requirements)
    total = 0
    for name in names:
        distribution = metadata.distribution(name)
        for file in distribution.files or []:
            path = Path(distribution.locate_file(file))
            if path.is_file():
                total += path.stat().st_size
    return total


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, default=None, help="staged model folder (default: the demo's)")
    parser.add_argument("--runs", type=int, default=5, help="fresh processes per variant")
    args = parser.parse_args()
    model, checkpoint = staged_model(args.model)
    workdir = Path(tempfile.mkdtemp(prefix="coldstart-"))
    (workdir / "torch").mkdir()
    (workdir / "bare").mkdir()
    (workdir / "torch" / "main.py").write_text(
        TORCH_MAIN.format(predict_dir=str(PREDICT_DIR), checkpoint=str(checkpoint))
    )
    (workdir / "bare" / "main.py").write_text(BARE_MAIN)

    variants = {
        "(a) predict, onnxruntime": PREDICT_DIR / "main.py",
        "(b) same handler, PyTorch": workdir / "torch" / "main.py",
        "(c) bare functions-framework": workdir / "bare" / "main.py",
    }
    medians = {}
    with services.start_firestore_emulator(workdir) as firestore:
        inherited = {k: v for k, v in os.environ.items() if not k.startswith("FIRESTORE")}
        env = {**inherited, **predict_env(firestore.url, model), "PYTHONPATH": str(REPO_ROOT)}
        for source in variants.values():
            first_201(source, env, workdir)  # warm the OS file cache: every variant then starts equally warm
        # The variants take turns, run by run, so that a slower minute of a shared machine hits all three.
        times: dict[str, list[float]] = {name: [] for name in variants}
        for run in range(args.runs):
            for name, source in variants.items():
                times[name].append(first_201(source, env, workdir))
            print(f"run {run + 1}/{args.runs} done", file=sys.stderr, flush=True)
        for name, runs in times.items():
            medians[name] = statistics.median(runs)
            print(
                f"{name:<32} median {medians[name] * 1000:7.0f} ms  runs: "
                + ", ".join(f"{t * 1000:.0f}" for t in runs),
                flush=True,
            )
    a, b, c = medians.values()
    print(f"\n(a)/(b) = {a / b:.2f} (target <= 0.35)   (a) - (c) = {(a - c) * 1000:.0f} ms (target <= 300 ms)")

    requirements = requirements_of("predict")
    shipped = installed_size(requirements)
    with_torch = installed_size([*requirements, "torch==2.13.0"])
    print(
        f"installed size: predict {shipped / 2**20:.0f} MiB, with torch {with_torch / 2**20:.0f} MiB, "
        f"ratio {shipped / with_torch:.2f} (target <= 0.3)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
