from dataclasses import dataclass, field

import pytest

from fmmc.cli.main import main
from fmmc.core.config import load_config, save_config
from fmmc.core.registry import build, registry
from fmmc.taxonomy import load_label_map, load_taxonomy
from fmmc.taxonomy.taxonomy import dms_names


def test_registry_parses_prefix_and_module_specs():
    reg = registry("backbone")
    entry, arg = reg.parse("hf:facebook/dinov2-base")
    assert entry.prefix == "hf" and arg == "facebook/dinov2-base"
    entry, arg = reg.parse("my_pkg.backbones:make")
    assert entry is None and arg == "my_pkg.backbones:make"


def test_registry_unknown_spec_says_how_to_fix():
    with pytest.raises(ValueError, match="(?s)unknown backbone spec 'dinov2'.*hf:facebook/dinov2-base"):
        build("backbone", "dinov2")


def test_registry_missing_module_names_it():
    with pytest.raises(ImportError, match="no_such_pkg"):
        build("backbone", "no_such_pkg.mod:factory")


def test_list_prints_spec_first(capsys):
    assert main(["list", "backbones"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    specs = [ln.split("\t")[0] for ln in lines]
    assert "hf:facebook/dinov2-base" in specs and "builtin:efficientnet-lite0" in specs
    assert main(["list", "describers"]) == 0
    specs = [ln.split("\t")[0] for ln in capsys.readouterr().out.splitlines()]
    assert {"none", "metadata", "openai:gpt-4o-mini"} <= set(specs)
    assert main(["list", "text-encoders"]) == 0
    assert "hf:openai/clip-vit-base-patch32" in capsys.readouterr().out


@dataclass
class Inner:
    lr: float = 5e-5
    names: list[str] = field(default_factory=list)


@dataclass
class Outer:
    name: str = "x"
    steps: int = 3
    flag: bool = False
    opt: str | None = None
    inner: Inner = field(default_factory=Inner)


def test_config_layers_and_roundtrip(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("steps: 7\ninner:\n  lr: 0.1\n")
    cfg = load_config(Outer, f, ["inner.names=[a,b]", "flag=true", "opt=hi"])
    assert cfg == Outer("x", 7, True, "hi", Inner(0.1, ["a", "b"]))
    save_config(cfg, tmp_path / "out.yaml")
    assert load_config(Outer, tmp_path / "out.yaml") == cfg


def test_config_errors_name_the_field(tmp_path):
    with pytest.raises(ValueError, match=r"Outer.steps: expected int"):
        load_config(Outer, overrides=["steps=many"])
    with pytest.raises(ValueError, match="unknown field.*'stepz'"):
        load_config(Outer, overrides=["stepz=1"])
    with pytest.raises(ValueError, match="key=value"):
        load_config(Outer, overrides=["steps"])


def test_default_taxonomy_and_maps():
    tax = load_taxonomy("default")
    assert len(tax) == 21
    fmd10 = ["fabric", "foliage", "glass", "leather", "metal", "paper", "plastic", "stone", "water", "wood"]
    assert list(tax.names[:10]) == fmd10
    assert {"ceramic", "rubber", "wax", "wicker", "sponge", "fur", "carpet", "cardboard", "concrete", "tile",
            "gemstone"} <= set(tax.names)
    assert load_label_map("fmd") == {n: n for n in fmd10}
    dms = load_label_map("dms")
    names = dms_names()
    assert len(names) == 57 and names[0] == "No label" and names[26] == "Metal"
    assert dms["Plastic clear"] == "plastic" and dms["Sky"] is None and dms["I cannot tell"] is None
    assert all(v is None or v in tax for v in dms.values())
    assert tax.index("METAL") == tax.index("metal")
    with pytest.raises(ValueError, match="unknown label 'unobtainium'"):
        tax.index("unobtainium")


def test_user_taxonomy_file(tmp_path):
    f = tmp_path / "tax.yaml"
    f.write_text("name: mine\nclasses: [steel, oak]\naliases: {iron: steel}\n")
    tax = load_taxonomy(f)
    assert tax.names == ("steel", "oak") and tax.index("iron") == 0
    f.write_text("classes: [a, a]\n")
    with pytest.raises(ValueError, match="more than once"):
        load_taxonomy(f)


def test_an_override_without_a_value_suggests_one_that_works():
    """Found trying it as a new user: `fmmc train ... lr` suggested train.lr=1e-4, itself refused for a
    TrainConfig ("unknown field(s) ['train']"). The example now names the key given."""
    from fmmc.core.config import load_config
    from fmmc.train.config import TrainConfig

    with pytest.raises(ValueError, match=r"e\.g\. lr=VALUE") as err:
        load_config(TrainConfig, None, ["lr"])
    assert load_config(TrainConfig, None, [str(err.value).split("e.g. ")[1].split(" ")[0].replace("VALUE", "1e-4")]).lr == 1e-4


@pytest.mark.parametrize("override", ["epochs=0", "batch_size=0", "patience=-1", "lr=0", "lr=-1"])
def test_training_numbers_that_cannot_train_are_refused_before_any_work(override, tmp_path, capsys):
    """Found trying it as a new user: --epochs 0 "succeeded" and saved an untrained model."""
    out = tmp_path / "run"
    assert main(["train", "--data", str(tmp_path / "not-read"), "--out", str(out), override]) == 1
    err = capsys.readouterr().err
    assert override.split("=")[0] + "=" in err and "e.g." in err and len(err.strip().splitlines()) == 1
    assert not out.exists()
