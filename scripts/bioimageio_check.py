"""CI's check of bioimage.io export: a small trained model of every exportable family and head, exported and tested.

For each case it trains a model for a few steps on the bundled sample with ``seglab train``, exports it
with ``seglab export --format bioimageio`` (which runs bioimageio.core's test before it writes), runs
bioimage.io's own command, ``bioimageio test``, on the package, and predicts the sample with the package
as ``seglab predict --model``. Any failure stops the run with exit code 1.

    python scripts/bioimageio_check.py [--out DIR] [--only unet-flows ...]
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SAMPLE = ROOT / "sample_data"
#: (name, seglab train options): every exportable family and every head it has
CASES = (
    ("unet-semantic", ["--label-mode", "scribbles", "--labels", str(SAMPLE / "nuclei_train_scribbles.tif")]),
    ("unet-boundary", ["--label-mode", "instances", "--instance-head", "boundary"]),
    ("unet-flows", ["--label-mode", "instances", "--instance-head", "flows"]),
    ("unet-distance", ["--label-mode", "instances", "--instance-head", "distance"]),
    ("fcn-semantic", ["--family", "fcn", "--label-mode", "scribbles",
                      "--labels", str(SAMPLE / "nuclei_train_scribbles.tif")]),
    ("fcn-boundary", ["--family", "fcn", "--label-mode", "instances", "--instance-head", "boundary"]),
    ("fcn-flows", ["--family", "fcn", "--label-mode", "instances", "--instance-head", "flows"]),
    ("fcn-distance", ["--family", "fcn", "--label-mode", "instances", "--instance-head", "distance"]),
)
TRAIN = ["--patch", "64", "--batch-size", "2", "--epochs", "1", "--steps-per-epoch", "3",
         "--device", "cpu", "--pretrained", "none"]


def run(cmd: list[str]) -> str:
    print("$", " ".join(cmd), flush=True)
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        print(done.stdout[-3000:], done.stderr[-3000:], sep="\n")
        raise SystemExit(f"failed ({done.returncode}): {' '.join(cmd[:3])}")
    return done.stdout


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=None,
                        help="keep the models and packages here (without it they go to a temporary folder, "
                             "removed at the end: about 1 GB)")
    parser.add_argument("--only", nargs="*", default=None, help="run only these cases")
    args = parser.parse_args()
    bin_dir = Path(sys.executable).parent
    seglab, bioimageio = str(bin_dir / "seglab"), str(bin_dir / "bioimageio")
    out = args.out or Path(tempfile.mkdtemp(prefix="seglab-bioimageio-"))
    out.mkdir(parents=True, exist_ok=True)
    try:
        check(out, args.only, seglab, bioimageio)
    finally:
        if args.out is None:
            shutil.rmtree(out, ignore_errors=True)
    return 0


def check(out: Path, only: list[str] | None, seglab: str, bioimageio: str) -> None:
    for name, options in CASES:
        if only and name not in only:
            continue
        t0 = time.perf_counter()
        labels = [] if "--labels" in options else ["--labels", str(SAMPLE / "nuclei_train_instances.tif")]
        model, package = out / f"{name}.pt", out / f"{name}.zip"
        run([seglab, "train", "--image", str(SAMPLE / "nuclei_train.tif"), *labels, *options, *TRAIN,
             "--model-out", str(model)])
        verdict = run([seglab, "export", "--model", str(model), "--format", "bioimageio", "--out", str(package),
                       "--image", str(SAMPLE / "nuclei_test.tif")]).strip().splitlines()[-1]
        run([bioimageio, "test", str(package)])
        run([seglab, "predict", "--model", str(package), "--input", str(SAMPLE / "nuclei_test.tif"),
             "--output", str(out / f"{name}_labels.tif")])
        print(f"{name}: {verdict}; bioimageio test passed; seglab predict ran the package "
              f"({time.perf_counter() - t0:.0f} s)", flush=True)


if __name__ == "__main__":
    sys.exit(main())
