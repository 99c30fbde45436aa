"""Regenerate the synthetic TIFFs in ``sample_data/``.

Usage (from the repository root)::

    python scripts/make_sample_data.py [--out sample_data]
    python scripts/make_sample_data.py --check      # do the files in sample_data/ still regenerate exactly?

Every file comes from :mod:`napari_seglab.core.synthetic` (the scribbles from
:mod:`napari_seglab.core.synthetic._scribbles`) with the fixed seeds below, so running
this again gives the same bytes. ``--check`` regenerates into a temporary
folder and compares byte for byte (exit 1 naming the files that differ): a
refactoring of the generators must keep it passing.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np
import tifffile

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from napari_seglab.core.io import write_csv  # noqa: E402
from napari_seglab.core.labels import BOX_COLUMNS, label_box_rows  # noqa: E402
from napari_seglab.core.synthetic import make_nuclei, make_scribbles  # noqa: E402

TRAIN_SEED = 1
TEST_SEED = 2
STACK_SEED = 3
SCRIBBLE_SEED = 11
SHAPE_2D = (256, 512)
SHAPE_3D = (8, 128, 128)


def _write(path: Path, data: np.ndarray, axes: str, what: str, seed: int) -> None:
    # tifffile's own JSON description carries the axes; no ImageJ metadata.
    tifffile.imwrite(
        path,
        data,
        photometric="minisblack",
        metadata={
            "axes": axes,
            "content": what,
            "generator": "napari_seglab.core.synthetic",
            "seed": seed,
        },
    )
    print(f"wrote {path} {data.shape} {data.dtype} ({path.stat().st_size / 1024:.0f} KiB)")


def write_all(out: Path) -> list[Path]:
    """Write every sample file into ``out``; return their paths."""
    out.mkdir(parents=True, exist_ok=True)
    image, instances = make_nuclei(SHAPE_2D, seed=TRAIN_SEED)
    scribbles = make_scribbles(instances, seed=SCRIBBLE_SEED)
    _write(out / "nuclei_train.tif", image, "YX", "image", TRAIN_SEED)
    _write(out / "nuclei_train_instances.tif", instances, "YX", "instances", TRAIN_SEED)
    _write(out / "nuclei_train_scribbles.tif", scribbles, "YX", "scribbles", SCRIBBLE_SEED)
    write_csv(out / "nuclei_boxes.csv", label_box_rows(instances, "YX", "instances"), columns=BOX_COLUMNS[:5])

    image, instances = make_nuclei(SHAPE_2D, seed=TEST_SEED)
    _write(out / "nuclei_test.tif", image, "YX", "image", TEST_SEED)
    _write(out / "nuclei_test_instances.tif", instances, "YX", "instances", TEST_SEED)

    stack, _stack_instances = make_nuclei(SHAPE_3D, seed=STACK_SEED)
    _write(out / "nuclei_stack.tif", stack, "ZYX", "image", STACK_SEED)
    return sorted([*out.glob("*.tif"), *out.glob("*.csv")])


def check(folder: Path) -> int:
    """0 when every generated file equals the one in ``folder`` byte for byte, else 1."""
    with tempfile.TemporaryDirectory() as tmp:
        fresh = write_all(Path(tmp))
        differ = [path.name for path in fresh
                  if not (folder / path.name).is_file() or (folder / path.name).read_bytes() != path.read_bytes()]
    if differ:
        print(f"differ from {folder}: {', '.join(differ)}", file=sys.stderr)
        return 1
    print(f"all {len(fresh)} sample files in {folder} regenerate byte for byte")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "sample_data", help="output folder")
    parser.add_argument("--check", action="store_true",
                        help="compare a fresh generation with the files in --out instead of writing them")
    args = parser.parse_args(argv)
    if args.check:
        return check(args.out)
    write_all(args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
