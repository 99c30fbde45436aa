import torch

from napari_seglab.core.models import balanced_class_weights, bce_dice, ce_dice, segmentation_loss


def test_ignored_pixels_do_not_change_the_loss():
    torch.manual_seed(0)
    logits = torch.randn(2, 3, 8, 8)
    target = torch.randint(0, 3, (2, 8, 8))
    target[:, :4] = -1
    base = ce_dice(logits, target)
    logits2 = logits.clone()
    logits2[:, :, :4] = torch.randn(2, 3, 4, 8) * 10  # change only ignored pixels
    assert torch.allclose(base, ce_dice(logits2, target))


def test_bce_dice_lower_for_correct_prediction():
    target = torch.zeros(1, 8, 8, dtype=torch.long)
    target[:, 2:6, 2:6] = 1
    good = (target.float() * 20 - 10).unsqueeze(1)
    assert bce_dice(good, target) < bce_dice(-good, target)
    assert bce_dice(good, target) < 0.05


def test_all_ignored_gives_zero_with_gradient():
    logits = torch.randn(1, 1, 4, 4, requires_grad=True)
    loss = segmentation_loss(logits, torch.full((1, 4, 4), -1))
    loss.backward()
    assert float(loss.detach()) == 0.0


def test_focal_and_class_weights_run_and_backprop():
    logits = torch.randn(2, 3, 8, 8, requires_grad=True)
    target = torch.randint(0, 3, (2, 8, 8))
    w = balanced_class_weights([1000, 200, 500])
    assert w[1] > w[2] > w[0]
    segmentation_loss(logits, target, class_weights=w, focal_gamma=2.0).backward()
    assert logits.grad is not None and torch.isfinite(logits.grad).all()
