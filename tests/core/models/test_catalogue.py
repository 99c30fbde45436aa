"""The family catalogue: each family's plain facts, declared once, read without torch; the Kind object."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys

import pytest

from napari_seglab.core.errors import InputError
from napari_seglab.core.models import (
    CARDS,
    CATALOGUE,
    FAMILIES,
    FamilyCard,
    Kind,
    families,
    family_card,
    get_family,
)

#: what building every ``seglab`` parser and reading the families' choices must not load
HEAVY = ("torch", "torchvision", "segmentation_models_pytorch", "timm", "scipy", "skimage", "dask")

READ_WITHOUT_TORCH = """
import json, sys
import napari_seglab.cli as cli
parser = cli.build_parser()
from napari_seglab.core.models import CARDS, FAMILIES, INSTANCE_HEADS, PRESETS, Kind, family_card
from napari_seglab.core.predict import BatchOptions, PredictOptions
from napari_seglab.core.train import TrainConfig
read = {card.name: [card.kind.boxes, card.archs, card.lr, card.lr_finetune, list(card.presets), card.heads,
                    card.cpu_step_s, list(card.stock)] for card in CARDS}
family_card("UNET"), TrainConfig().label_mode, PredictOptions().check(), BatchOptions().check()
sub = next(a for a in parser._actions if a.dest == "command").choices
helps = {name: p.format_help() for name, p in sub.items()}
print(json.dumps({"loaded": sorted({m.split(".")[0] for m in sys.modules} & set(sys.argv[1].split(","))),
                  "families": list(read), "help": len(helps)}))
"""


def test_the_cli_parsers_and_the_family_choices_import_no_torch():
    result = subprocess.run([sys.executable, "-c", READ_WITHOUT_TORCH, ",".join(HEAVY)], capture_output=True,
                            text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["loaded"] == []
    assert report["families"] == list(FAMILIES) and report["help"] == 6


def test_every_registered_family_is_its_card_with_code():
    assert tuple(f.name for f in families()) == FAMILIES == tuple(card.name for card in CARDS)
    for family in families():
        card = CATALOGUE[family.name]
        for field in dataclasses.fields(FamilyCard):
            assert getattr(family, field.name) == getattr(card, field.name), (family.name, field.name)
        assert family_card(family.name.upper()) is card and get_family(family.name) is family


def test_an_unknown_family_card_lists_the_families():
    with pytest.raises(InputError) as error:
        family_card("yolo")
    assert all(name in str(error.value) for name in FAMILIES)


def test_each_kind_has_exactly_one_property():
    for kind in Kind:
        assert [kind.dense, kind.instances, kind.boxes].count(True) == 1
    assert Kind.SEMANTIC.dense and Kind.INSTANCES.instances and Kind.BOXES.boxes


def test_a_kind_reads_and_writes_as_its_checkpoint_string():
    assert Kind("boxes") is Kind.BOXES and Kind.BOXES == "boxes"
    assert str(Kind.INSTANCES) == f"{Kind.INSTANCES}" == "instances"
    assert json.dumps({"kind": Kind.SEMANTIC}) == '{"kind": "semantic"}'


def test_a_card_takes_its_kind_by_value_and_refuses_an_unknown_one():
    fields = dict(name="x", label="X", archs=("a",), default_arch="a", bytes_per_pixel=1, train_bytes_per_pixel=1,
                  lr=1e-3, lr_finetune=1e-3, exportable=False)
    assert FamilyCard(kind="boxes", **fields).kind is Kind.BOXES
    with pytest.raises(ValueError, match="semantic, instances, boxes"):
        FamilyCard(kind="panoptic", **fields)


def test_the_families_kinds():
    assert {card.name for card in CARDS if card.kind.dense} == {"unet", "fcn"}
    assert {card.name for card in CARDS if card.kind.instances} == {"maskrcnn"}
    assert {card.name for card in CARDS if card.kind.boxes} == {"retinanet", "fcos", "fasterrcnn"}
