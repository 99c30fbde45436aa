import os
import pickle
import signal
import subprocess
import sys
import textwrap

import pytest
import torch

from napari_seglab.core.errors import InputError
from napari_seglab.core.models import (
    ModelSpec,
    build_model,
    describe_checkpoint,
    load_checkpoint,
    save_checkpoint,
)


def _model():
    spec = ModelSpec(family="unet", arch="Unet", encoder="resnet18", in_channels=1, n_classes=2)
    model, _ = build_model(spec)
    return model, {"model": spec.to_dict(), "label_mode": "scribbles", "normalization": {}}


def test_roundtrip_restores_weights_and_meta(tmp_path):
    model, meta = _model()
    path = save_checkpoint(tmp_path / "m.pt", model, meta)
    ckpt = load_checkpoint(path)
    rebuilt = ckpt.build("cpu")
    x = torch.randn(1, 1, 64, 64)
    model.eval()
    assert torch.allclose(model(x), rebuilt(x), atol=1e-5)
    assert ckpt.spec.encoder == "resnet18"
    assert "unet Unet/resnet18" in describe_checkpoint(ckpt)


class Evil:
    def __reduce__(self):
        return (os.system, ("touch PWNED",))


def test_pickled_code_is_refused_without_running(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "evil.pt"
    torch.save({"format": "napari-seglab", "version": 1, "meta": {"model": {}}, "state_dict": {}, "x": Evil()}, path)
    with pytest.raises(InputError, match="pickled"):
        load_checkpoint(path)
    assert not (tmp_path / "PWNED").exists()


@pytest.mark.parametrize("content,message", [(b"", "empty"), (b"garbage" * 100, "corrupt|truncated")])
def test_bad_checkpoint_files(tmp_path, content, message):
    p = tmp_path / "bad.pt"
    p.write_bytes(content)
    with pytest.raises(InputError, match=message):
        load_checkpoint(p)


def test_truncated_and_foreign_checkpoints(tmp_path):
    model, meta = _model()
    path = save_checkpoint(tmp_path / "m.pt", model, meta)
    data = path.read_bytes()
    (tmp_path / "t.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(InputError, match="truncated or corrupt"):
        load_checkpoint(tmp_path / "t.pt")
    torch.save({"weights": torch.zeros(2)}, tmp_path / "other.pt")
    with pytest.raises(InputError, match="not a napari-seglab checkpoint"):
        load_checkpoint(tmp_path / "other.pt")
    with pytest.raises(InputError, match="no such"):
        load_checkpoint(tmp_path / "missing.pt")
    assert pickle  # pickle imported for the evil-object test above


@pytest.mark.slow
def test_sigkill_mid_write_leaves_previous_checkpoint(tmp_path):
    """A writer killed mid-save leaves the old file intact and no partial file under the final name."""
    model, meta = _model()
    path = save_checkpoint(tmp_path / "m.pt", model, meta)
    before = path.read_bytes()
    script = textwrap.dedent(f"""
        import os, signal, torch
        import napari_seglab.core.io as io
        from napari_seglab.core.models._checkpoint import save_checkpoint
        from napari_seglab.core.models import ModelSpec, build_model
        real_save = torch.save
        def dying_save(obj, f, *a, **k):  # f: the open temporary file
            f.write(b"partial" * 1000)
            f.flush()
            os.kill(os.getpid(), signal.SIGKILL)
        torch.save = dying_save
        spec = ModelSpec(family="unet", arch="Unet", encoder="resnet18")
        m, _ = build_model(spec)
        save_checkpoint({str(path)!r}, m, {{"model": spec.to_dict()}})
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True)
    assert proc.returncode == -signal.SIGKILL
    assert path.read_bytes() == before
    load_checkpoint(path)
    leftovers = [p.name for p in tmp_path.iterdir() if p.name != "m.pt"]
    assert all(name.startswith(".m.pt.tmp-") for name in leftovers)
