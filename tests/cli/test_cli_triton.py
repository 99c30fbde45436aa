"""`seglab predict` and `seglab batch` on the CPU keep triton (the GPU kernel compiler) out of the process."""

import numpy as np
import pytest

from napari_seglab.cli.common import leave_out_triton


@pytest.mark.parametrize("command", ["predict", "batch"])
def test_a_cpu_prediction_from_the_command_line_leaves_triton_out(random_unet, tmp_path, command):
    """torchvision pulls in torch._dynamo, which imports triton where it is installed (0.07 GiB resident);
    `seglab predict/batch --device cpu` mark it missing first, and still predict. A GPU request keeps it."""
    import importlib.util
    import os
    import subprocess
    import sys

    import tifffile

    if importlib.util.find_spec("triton") is None:
        pytest.skip("triton is not installed: nothing to leave out")
    image = tmp_path / "img.tif"
    tifffile.imwrite(image, np.zeros((64, 64), np.uint16))
    code = ("import sys\nfrom napari_seglab.cli.common import leave_out_triton\n"
            "assert not leave_out_triton('cuda:0') and 'triton' not in sys.modules\n"
            "from napari_seglab.cli import main\n"
            "rc = main(sys.argv[1:])\n"
            "print('RESULT', rc, 'torchvision' in sys.modules, 'triton' in sys.modules, sys.modules.get('triton'))\n")
    where = (["--input", str(image), "--output", str(tmp_path / "o.tif")] if command == "predict"
             else ["--input-dir", str(tmp_path), "--output-dir", str(tmp_path / "out")])
    proc = subprocess.run([sys.executable, "-c", code, command, "--model", str(random_unet), *where,
                           "--device", "cpu", "--runtime", "torch"],
                          capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    assert "RESULT 0 True True None" in proc.stdout, proc.stderr[-2000:]
    written = tmp_path / "o.tif" if command == "predict" else tmp_path / "out" / "img_labels.tif"
    assert written.exists(), sorted(p.name for p in tmp_path.rglob("*"))


def test_leaving_triton_out_imports_no_torch():
    """The commands check their paths before they pay for torch (tests/cli/test_cli_hostile.py): the
    triton decision must not import it."""
    import subprocess
    import sys

    code = ("import sys\nfrom napari_seglab.cli.common import leave_out_triton\nleave_out_triton('auto')\n"
            "print('TORCH', 'torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert "TORCH False" in out.stdout, out.stderr[-2000:]
    assert leave_out_triton("cuda:0") is False
