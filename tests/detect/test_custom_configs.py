"""configs/custom_*.yaml load strictly into their dataclasses and agree with each other."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

from backbone.config import config_to_dict, load_config
from backbone.crops import PAPER_SIZE, SINGLE_SCALE
from backbone.train import ClassifierConfig
from detect.config import DetectorConfig
from detect.region_crops import CropSettings
from proposals import ProposalConfig
from proposals.multibox_train import MultiBoxConfig

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
KINDS = {"classifier": ClassifierConfig, "detector": DetectorConfig, "multibox": MultiBoxConfig,
         "proposals": ProposalConfig}


def load(name: str):
    kind = re.fullmatch(r"custom_([a-z]+)(_gpu)?\.yaml", name)[1]
    return load_config(KINDS[kind], CONFIGS / name)


@pytest.mark.parametrize("name", sorted(p.name for p in CONFIGS.glob("custom_*.yaml")))
def test_loads_strictly(name):
    assert load(name) is not None


@pytest.mark.parametrize("suffix", ["", "_gpu"])
def test_the_steps_fit_together(suffix):
    classifier, multibox = load(f"custom_classifier{suffix}.yaml"), load(f"custom_multibox{suffix}.yaml")
    assert multibox.model.width == classifier.model.width  # train-multibox --init runs/cls
    detector = load(f"custom_detector{suffix}.yaml")
    assert detector.finetune.init_head == "match" and detector.regions.context_pad == CropSettings().context_pad
    proposals = config_to_dict(load("custom_proposals.yaml"))
    cached = config_to_dict(detector.proposals)
    cached["multibox"]["device"] = proposals["multibox"]["device"]
    assert cached == proposals


def test_crops_default_size_fits_the_cpu_classifier():
    # a saved crop is 256/224 of the input: train-classifier's centre crop leaves the detector's view
    size = load("custom_classifier.yaml").model.input_size
    assert CropSettings().size == round(size * SINGLE_SCALE / PAPER_SIZE) == 128
