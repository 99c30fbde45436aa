"""The model families as plain data, declared once and readable without importing torch.

Each family is one :class:`FamilyCard` here: its name, what it outputs (a :class:`Kind`),
architectures, learning rates, presets, instance heads, label modes, memory and time costs and
stock models. Its module (``_unet``, ``_fcn``, ...) adds the code (build, loss, tiled prediction,
checks) to make the :class:`~napari_seglab.core.models._family.Family` the registry lists. The
command line's options, the training help and the docks' choices read the cards, so building
``seglab``'s parser loads neither torch nor torchvision.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import Enum

from ..errors import InputError


class Kind(str, Enum):
    """What a family's network outputs, or what a prediction holds; checkpoints keep the value string."""

    SEMANTIC = "semantic"  # a value per pixel: classes, or an instance head's maps
    INSTANCES = "instances"  # one mask per object: object ids
    BOXES = "boxes"  # one box per object

    def __str__(self) -> str:
        return self.value

    @property
    def dense(self) -> bool:
        """A value per pixel (a family that shares the blended tiled path; a prediction of classes)."""
        return self is Kind.SEMANTIC

    @property
    def instances(self) -> bool:
        """Labels of one id per object (Mask R-CNN, or a dense model's objects)."""
        return self is Kind.INSTANCES

    @property
    def boxes(self) -> bool:
        """Boxes are the whole result: a box detector, whose prediction has no labels."""
        return self is Kind.BOXES


#: instance heads of a dense network (``options["head"]``): "boundary" is the 3-class background /
#: interior / boundary map (absent from older checkpoints); "flows" and "distance" are the
#: regression heads of :mod:`napari_seglab.core.objects._flows` (a foreground logit plus flow or distance channels)
INSTANCE_HEADS = ("boundary", "flows", "distance")


#: the most classes (background included) a model may have: what a checkpoint is allowed to record, so
#: training refuses class ids at or above it before building anything
MAX_CLASSES = 4096
#: the most objects a detector gives for one image (its ``detections_per_img``) unless its card says
MAX_OBJECTS = 2000


@dataclass(frozen=True)
class Preset:
    """A named choice of encoder and depth for a family (the Model tab and ``seglab train --preset``).

    ``cpu_step_s``: seconds per training step (batch 8 of 128 px, 1 channel,
    bfloat16 autocast, 2 threads) measured on this project's quiet 2-core
    machine with ``benchmarks/train_step_profile.py``; float32 costs about
    1.5-1.8x more, a busy machine 2-4x more; a GPU step costs milliseconds.
    """

    name: str
    encoder: str
    encoder_depth: int
    decoder_channels: tuple[int, ...]
    cpu_step_s: float
    summary: str

    def options(self) -> dict:
        return {"encoder_depth": self.encoder_depth, "decoder_channels": list(self.decoder_channels)}


@dataclass(frozen=True)
class FamilyCard:
    """What SegLab knows about one model family apart from its code."""

    name: str
    kind: Kind
    label: str  # the drop-down text
    archs: tuple[str, ...]
    default_arch: str
    #: bytes of working memory a forward pass needs per input pixel (float32, CPU): the tile size
    bytes_per_pixel: int
    #: a floor of the bytes per pixel one float32 training step needs: refuses a patch x batch too big
    train_bytes_per_pixel: int
    lr: float  # AdamW learning rate from scratch
    lr_finetune: float  # ... from pretrained weights or a checkpoint
    exportable: bool  # the network maps an image to a tensor (TorchScript / ONNX / bioimage.io)
    default_encoder: str | None = None  # None: the architecture fixes the backbone
    presets: Mapping[str, Preset] = field(default_factory=dict)
    default_preset: Mapping[str, str] = field(default_factory=dict)  # device type -> preset name
    heads: tuple[str, ...] = ("boundary",)  # instance heads the family's network can carry
    label_modes: tuple[str, ...] | None = None  # None: every label mode
    label_modes_note: str = ""  # why only those
    #: ready-made torchvision models: stock name -> (architecture, weights source)
    stock: Mapping[str, tuple[str, str]] = field(default_factory=dict)
    channels_last: bool = True  # the network takes a batch tensor (detectors take lists)
    #: a blanked-out hold-out would teach a whole-object family "background" there: it picks its
    #: best model by training loss instead
    holdout: bool = True
    steps_to_useful: int = 150  # steps on the sample nuclei before a prediction is worth correcting
    cpu_step_s: float = 0.4  # typical seconds per CPU training step when no preset says
    #: object and box families: the most objects the network gives for one image (its detections per image);
    #: training refuses a patch holding more boxes
    max_objects: int = MAX_OBJECTS
    #: architecture -> (seconds per CPU step, steps before useful) where it differs from the card's figures,
    #: which are those of ``default_arch``
    arch_costs: Mapping[str, tuple[float, int]] = field(default_factory=dict)
    #: the default architecture on a GPU, where it is not ``default_arch`` (a heavier network a GPU trains in time)
    gpu_arch: str | None = None
    #: architecture -> learning rate from scratch, where it is not ``lr`` (which is ``default_arch``'s)
    arch_lr: Mapping[str, float] = field(default_factory=dict)

    def __post_init__(self):
        if self.kind not in tuple(Kind):  # a Kind, or its value as a checkpoint or a plug-in spells it
            raise ValueError(f"family {self.name}: kind {self.kind!r} is not one of {', '.join(Kind)}")
        object.__setattr__(self, "kind", Kind(self.kind))
        named = [("default architecture", self.default_arch), ("GPU architecture", self.gpu_arch or self.default_arch),
                 *(("architecture of arch_costs", a) for a in self.arch_costs),
                 *(("architecture of arch_lr", a) for a in self.arch_lr)]
        for role, arch in named:
            if arch not in self.archs:
                raise ValueError(f"family {self.name}: {role} {arch!r} not in its list")

    @property
    def semantic(self) -> bool:
        """True when the network outputs a value per pixel (classes, or an instance head's maps)."""
        return self.kind.dense

    def default_lr(self, fine_tune: bool, arch: str | None = None) -> float:
        """AdamW's learning rate for a model of ``arch`` (default: ``default_arch``) from scratch or fine-tuned."""
        return self.lr_finetune if fine_tune else self.arch_lr.get(arch, self.lr)

    def default_arch_on(self, device_type: str) -> str:
        """The architecture a fresh model of this family gets on a device of ``device_type`` ("cpu", "cuda"...)."""
        return self.gpu_arch if device_type == "cuda" and self.gpu_arch else self.default_arch

    def cpu_cost(self, arch: str) -> tuple[float, int]:
        """(typical seconds per CPU training step, steps before a prediction is worth correcting) of ``arch``."""
        return self.arch_costs.get(arch, (self.cpu_step_s, self.steps_to_useful))


def choose(name: str, options: Sequence[str], what: str) -> str:
    """``name`` as spelt in ``options`` (case-insensitive); InputError listing them otherwise."""
    if name in options:
        return name
    lowered = {o.lower(): o for o in options}
    if isinstance(name, str) and name.lower() in lowered:
        return lowered[name.lower()]
    raise InputError(f"unknown {what} {name!r}; choose one of: {', '.join(options)}")


# ----------------------------------------------------------------------------- the families

SMP_ARCHS = ("Unet", "UnetPlusPlus", "FPN", "DeepLabV3Plus", "MAnet", "Linknet", "PAN", "PSPNet", "DeepLabV3")
DEFAULT_ENCODER = "resnet34"
#: ``fast`` won the 2-core measurement (benchmarks/quality_vs_time.py): a 3-level ResNet-18
#: encoder with a narrow decoder takes ~5x the steps per second of the 5-level ResNet-34 and
#: reaches its quality within the first minute; ``accurate`` is the classic deep U-Net for a GPU
#: or long runs.
PRESETS = {
    "fast": Preset("fast", "resnet18", 3, (64, 32, 16), 0.08,
                   "3-level ResNet-18 U-Net, narrow decoder: useful within a minute on a laptop CPU"),
    "accurate": Preset("accurate", "resnet34", 5, (256, 128, 64, 32, 16), 0.22,
                       "5-level ResNet-34 U-Net: more context; slow on a CPU, the choice for a GPU"),
}
DEFAULT_PRESET = {"cpu": "fast", "cuda": "accurate", "mps": "fast"}
FCN_ARCHS = ("fcn_resnet18", "fcn_resnet50", "fcn_resnet101")
MASKRCNN_ARCHS = ("maskrcnn_resnet18_fpn", "maskrcnn_resnet50_fpn", "maskrcnn_resnet50_fpn_v2")
RETINANET_ARCHS = ("retinanet_resnet18_fpn", "retinanet_resnet50_fpn", "retinanet_resnet50_fpn_v2")
FCOS_ARCHS = ("fcos_resnet18_fpn", "fcos_resnet50_fpn")
FASTERRCNN_ARCHS = ("fasterrcnn_resnet18_fpn", "fasterrcnn_resnet50_fpn", "fasterrcnn_resnet50_fpn_v2")


def _box_detector(short: str, **facts) -> FamilyCard:
    """A box detector's card: what the three share, and its own ``facts``.

    Their ``cpu_step_s``: the default ResNet-18 FPN with the default patches (8 of 128 px), 2
    threads, quiet 2-core machine (benchmarks/detection.py); a core shared with other jobs costs
    2-4x the wall time. Each card adds its time for batch 4 of 256 px on 1 thread.
    """
    return FamilyCard(kind=Kind.BOXES, label=f"{short} (boxes)",
                      exportable=False,  # its output is a list of detections, not a tensor
                      label_modes=("boxes", "instances"),
                      label_modes_note=f"{short} learns boxes: it trains on drawn boxes, or on 'instances' "
                                       "labels (one box per object)",
                      channels_last=False, holdout=False, **facts)


#: every family, the default first (the order of the drop-downs)
CARDS: tuple[FamilyCard, ...] = (
    FamilyCard(
        name="unet", kind=Kind.SEMANTIC, label="U-Net", archs=SMP_ARCHS, default_arch="Unet",
        # Unet-resnet34: peak RSS over the model's own size 493-533 at 512-1024 px (float32, CPU,
        # channels_last, inference mode)
        bytes_per_pixel=540, train_bytes_per_pixel=1000, lr=3e-3, lr_finetune=1e-3, exportable=True,
        default_encoder=DEFAULT_ENCODER, presets=PRESETS, default_preset=DEFAULT_PRESET, heads=INSTANCE_HEADS,
        steps_to_useful=150,
    ),
    FamilyCard(
        name="fcn", kind=Kind.SEMANTIC, label="FCN", archs=FCN_ARCHS,
        # benchmarks/families.py, DSB nuclei, dense instances, 90 s on 2 cores: fcn_resnet18 156 steps, Dice 0.925,
        # AP@0.5 0.787 (boundary head); fcn_resnet50 22 steps, Dice 0.008: it cannot learn in a CPU budget
        default_arch="fcn_resnet18", gpu_arch="fcn_resnet50",
        bytes_per_pixel=900,  # FCN-resnet50: 880 at 512 px (float32, CPU, inference mode)
        train_bytes_per_pixel=1500, lr=3e-3, lr_finetune=1e-3, exportable=True, heads=INSTANCE_HEADS,
        stock={"fcn_resnet50_voc": ("fcn_resnet50", "voc"), "fcn_resnet101_voc": ("fcn_resnet101", "voc")},
        # ResNet-18: the fast U-Net's step scaled by the steps both made in one 120 s run (365 and 340, DSB image);
        # AP@0.5 0.75 after 94 steps. ResNet-101: ResNet-50's step scaled by torchvision's FLOPs (232.7 / 152.7)
        steps_to_useful=100, cpu_step_s=0.1,
        arch_costs={"fcn_resnet50": (2.5, 300), "fcn_resnet101": (3.8, 300)},
    ),
    FamilyCard(
        name="maskrcnn", kind=Kind.INSTANCES, label="Mask R-CNN", archs=MASKRCNN_ARCHS,
        # the ResNet-18 FPN with narrow heads on a CPU (a step of torchvision's ResNet-50 FPN costs 20-34 s there,
        # batch 8 of 128 px, 1 thread: 29 steps in 600 s on 2 cores), torchvision's ResNet-50 FPN on a GPU
        default_arch="maskrcnn_resnet18_fpn", gpu_arch="maskrcnn_resnet50_fpn",
        bytes_per_pixel=1500, train_bytes_per_pixel=2000,
        # from scratch, AdamW diverges above ~1e-4 with ResNet-50 (U-Nets and FCNs like 3e-3); the ResNet-18 FPN,
        # whose BatchNorm trains, learns at 3e-4 as the box detectors' do
        lr=3e-4, lr_finetune=1e-4,
        arch_lr={"maskrcnn_resnet50_fpn": 1e-4, "maskrcnn_resnet50_fpn_v2": 1e-4},
        exportable=False,  # its output is a list of detections, not a tensor
        label_modes=("instances",),
        label_modes_note="Mask R-CNN learns objects: it needs 'instances' labels (each object its own id)",
        stock={"maskrcnn_coco": ("maskrcnn_resnet50_fpn", "coco"),
               "maskrcnn_v2_coco": ("maskrcnn_resnet50_fpn_v2", "coco")},
        # ResNet-18 FPN: the fast U-Net's step scaled by the steps both made in one 120 s run (75 and 340, DSB
        # image); AP@0.5 0.31 after 33 steps, 0.60 after 75, 0.88 after 219. ResNet-50 v2: v1's step x 2.1, as
        # Faster R-CNN's (benchmarks/detection.py)
        channels_last=False, holdout=False, steps_to_useful=150, cpu_step_s=0.4, max_objects=1000,
        arch_costs={"maskrcnn_resnet50_fpn": (6.0, 3000), "maskrcnn_resnet50_fpn_v2": (12.6, 3000)},
    ),
    _box_detector(
        "RetinaNet", name="retinanet", archs=RETINANET_ARCHS,
        default_arch="retinanet_resnet18_fpn", bytes_per_pixel=1200, train_bytes_per_pixel=1600,
        # from scratch on the sample nuclei (ResNet-18, batch 4 of 256 px, torchvision's plain head): AdamW 1e-4
        # reached box AP@0.5 0.26 after 200 steps, 3e-4 0.13 (0.50 after 400), 1e-3 0.08 with a noisier loss;
        # none diverged. With the GroupNorm head, 1e-4 gives 0.24 after 100 steps
        lr=1e-4, lr_finetune=1e-4,
        stock={"retinanet_coco": ("retinanet_resnet50_fpn", "coco"),
               "retinanet_v2_coco": ("retinanet_resnet50_fpn_v2", "coco")},
        steps_to_useful=1500,  # benchmarks/detection.py, 300 s on 2 cores: 735 steps gave box AP@0.5 0.44 only
        # batch 4 of 256 px on 1 thread: 1.45 s (ResNet-50 FPN 2.40 s, v2 2.46 s)
        cpu_step_s=0.41,
    ),
    _box_detector(
        "FCOS", name="fcos", archs=FCOS_ARCHS, default_arch="fcos_resnet18_fpn",
        bytes_per_pixel=1200, train_bytes_per_pixel=1600,
        # from scratch on the sample nuclei (ResNet-18, batch 4 of 256 px): AdamW 3e-4 learned without diverging
        # (box AP@0.5 0.19 after 100 steps, 0.18 after 200: it over-counts, 339 boxes for 147 nuclei at score 0.3)
        lr=3e-4, lr_finetune=1e-4,
        stock={"fcos_coco": ("fcos_resnet50_fpn", "coco")},
        steps_to_useful=800,  # benchmarks/detection.py, 300 s on 2 cores: 781 steps gave box AP@0.5 0.92
        # batch 4 of 256 px on 1 thread: 1.4 s (ResNet-50 FPN 2.42 s)
        cpu_step_s=0.38,
    ),
    _box_detector(
        "Faster R-CNN", name="fasterrcnn", archs=FASTERRCNN_ARCHS,
        default_arch="fasterrcnn_resnet18_fpn", bytes_per_pixel=1400, train_bytes_per_pixel=1800,
        # from scratch on the sample nuclei (ResNet-18, batch 4 of 256 px), AdamW 3e-4: box AP@0.5 0.74 after 50
        # steps and 0.94 (AP@0.75 0.62, F1 0.89 at score 0.3) after 100: the fastest learner of the three
        lr=3e-4, lr_finetune=1e-4,
        stock={"fasterrcnn_coco": ("fasterrcnn_resnet50_fpn", "coco"),
               "fasterrcnn_v2_coco": ("fasterrcnn_resnet50_fpn_v2", "coco")},
        steps_to_useful=100,
        # batch 4 of 256 px on 1 thread: 3.0 s (ResNet-50 FPN 4.21 s, v2 8.93 s)
        cpu_step_s=2.7,
    ),
)
CATALOGUE: dict[str, FamilyCard] = {card.name: card for card in CARDS}
FAMILIES = tuple(CATALOGUE)  # the names
DEFAULT_FAMILY = CARDS[0].name
DEFAULT_ARCH = {card.name: card.default_arch for card in CARDS}


def family_card(name: str) -> FamilyCard:
    """The card of family ``name`` (any letter case); InputError listing the families otherwise."""
    return CATALOGUE[choose(name, FAMILIES, "model family")]

