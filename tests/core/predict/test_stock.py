import numpy as np
import pytest
import torch

from napari_seglab.core.errors import InputError
from napari_seglab.core.events import drive
from napari_seglab.core.predict import STOCK, iter_predict_image, load_stock, stock_available


def test_absent_stock_weights_give_a_clear_message(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    assert not stock_available("maskrcnn_coco")
    with pytest.raises(InputError, match="not in the torch cache"):
        load_stock("maskrcnn_coco", "cpu")
    with pytest.raises(InputError, match="unknown stock model"):
        load_stock("yolo", "cpu")
    assert set(STOCK) >= {"maskrcnn_coco", "fcn_resnet50_voc"}


@pytest.mark.slow
def test_cached_stock_fcn_predicts_voc_classes(tmp_path, monkeypatch):
    """A file under the cache name is picked up (here: random weights of the right shape)."""
    from torchvision.models.segmentation import FCN_ResNet50_Weights, fcn_resnet50

    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    url = FCN_ResNet50_Weights.DEFAULT.url
    cache = tmp_path / "hub" / "checkpoints"
    cache.mkdir(parents=True)
    model = fcn_resnet50(weights=None, weights_backbone=None, num_classes=21, aux_loss=True)
    torch.save(model.state_dict(), cache / url.rsplit("/", 1)[-1])
    lm = load_stock("fcn_resnet50_voc", "cpu", in_channels=1)
    assert lm.meta["class_names"][0] == "__background__" and lm.spec.n_classes == 21
    pred = drive(iter_predict_image(lm, np.random.default_rng(0).random((64, 80)).astype(np.float32)))
    assert pred.labels.shape == (64, 80) and pred.labels.max() < 21
