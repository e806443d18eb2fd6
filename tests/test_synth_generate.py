"""Generator on a tiny random-init Stable Diffusion pipeline: files, seeds, OOM retry, blank/NSFW rejects."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("diffusers")

from fixtures_synth import BlackImages, OOMAbove, make_tiny_sd_pipeline  # noqa: E402

from fmmc.core.registry import build  # noqa: E402
from fmmc.synth.config import GenerateConfig  # noqa: E402
from fmmc.synth.generate import Generator, is_oom, load_pipeline  # noqa: E402


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One torch thread: on a shared 2-core machine two spinning OpenMP threads can be 50x slower."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def tiny_sd(tmp_path_factory):
    return make_tiny_sd_pipeline(tmp_path_factory.mktemp("tiny_sd"))


@pytest.fixture(scope="module")
def cfg(tiny_sd):
    return GenerateConfig(model_id=str(tiny_sd), height=64, width=64, steps=2, scheduler="ddim", dtype="float32",
                          device="cpu", batch_size=4)


@pytest.fixture(scope="module")
def pipe(cfg):
    return load_pipeline(cfg)


def items(n, label="wood"):
    return [{"id": f"{label}--chair--oak--{k}", "label": label, "prompt": f"a photo of an oak wood chair {k % 2}",
             "seed": 1000 + k} for k in range(n)]


def test_generates_pngs_with_provenance(cfg, pipe, tmp_path):
    out = Generator(cfg, tmp_path, pipe=pipe)(items(3))
    assert [r["status"] for r in out] == ["ok"] * 3
    r = out[0]
    assert r["image"] == "images/wood/wood--chair--oak--0.png" and r["model_id"] == cfg.model_id
    assert (r["width"], r["height"], r["steps"], r["scheduler"]) == (64, 64, 2, "DDIMScheduler")
    img = Image.open(tmp_path / r["image"])
    assert img.size == (64, 64) and img.text["seed"] == "1000" and img.text["prompt"] == items(1)[0]["prompt"]
    assert not list(tmp_path.rglob("*.tmp"))


def test_loads_through_the_registry_spec(cfg, tiny_sd, tmp_path):
    gen = build("generator", f"diffusers:{tiny_sd}", cfg=cfg, root=tmp_path)
    assert gen.spec == f"diffusers:{tiny_sd}" and gen([items(1)[0]])[0]["generator"] == gen.spec


def test_same_seed_same_image_whatever_the_batch(cfg, pipe, tmp_path):
    alone = [Generator(cfg, tmp_path / f"one{k}", pipe=pipe)([it])[0] for k, it in enumerate(items(3))]
    batched = Generator(cfg, tmp_path / "batch", pipe=pipe)(items(3))
    again = Generator(cfg, tmp_path / "again", pipe=pipe)(items(3))
    for k in range(3):
        a = np.asarray(Image.open(tmp_path / f"one{k}" / alone[k]["image"]), dtype=int)
        b = np.asarray(Image.open(tmp_path / "batch" / batched[k]["image"]), dtype=int)
        assert np.abs(a - b).max() <= 2  # batched conv/attention may round differently by one 8-bit level
        assert (tmp_path / "batch" / batched[k]["image"]).read_bytes() == (tmp_path / "again" / again[k]["image"]).read_bytes()
    first, second = (np.asarray(Image.open(tmp_path / "batch" / batched[k]["image"]), dtype=int) for k in (0, 2))
    assert np.abs(first - second).mean() > 1  # different seeds, different images


def test_cuda_oom_halves_the_batch_and_keeps_going(cfg, pipe, tmp_path, caplog):
    wrapped = OOMAbove(pipe, max_batch=1)
    gen = Generator(cfg, tmp_path, pipe=wrapped)
    out = gen(items(5))
    assert [r["status"] for r in out] == ["ok"] * 5 and [r["id"] for r in out] == [i["id"] for i in items(5)]
    # 4 -> OOM -> 2 -> OOM -> 1, 1, then 2 -> OOM -> 1, 1, then the smaller batch size is kept: 1
    assert wrapped.calls == [4, 2, 1, 1, 2, 1, 1, 1]
    assert gen.batch_size == 1 and "out of memory" in caplog.text
    reference = Generator(cfg, tmp_path / "ref", pipe=pipe)(items(5))
    for a, b in zip(out, reference):
        x = np.asarray(Image.open(tmp_path / a["image"]), dtype=int)
        y = np.asarray(Image.open(tmp_path / "ref" / b["image"]), dtype=int)
        assert np.abs(x - y).max() <= 2


def test_oom_at_batch_size_one_says_how_to_fix(cfg, pipe, tmp_path):
    gen = Generator(cfg, tmp_path, pipe=OOMAbove(pipe, max_batch=0))
    with pytest.raises(RuntimeError, match="height/width.*float16") as e:
        gen(items(2))
    assert is_oom(e.value.__cause__)


def test_blank_and_nsfw_images_are_rejected(cfg, pipe, tmp_path):
    out = Generator(cfg, tmp_path, pipe=BlackImages(pipe))(items(4))
    assert [r["status"] for r in out] == ["rejected"] * 4
    assert [r["reason"] for r in out] == ["nsfw filtered", "blank image"] * 2
    assert all(r["image"] is None for r in out) and not list(tmp_path.rglob("*.png"))


def test_bad_settings_fail_clearly(cfg, tiny_sd, tmp_path):
    from dataclasses import replace

    with pytest.raises(ValueError, match="not a diffusers scheduler"):
        load_pipeline(replace(cfg, scheduler="warp-drive"))
    with pytest.raises(ValueError, match="prompt"):
        Generator(cfg, tmp_path, pipe=object())([{"id": "x", "seed": 1}])
    from fmmc.core.hub import WeightsUnavailableError

    with pytest.raises(WeightsUnavailableError, match="local path"):
        load_pipeline(replace(cfg, model_id=str(tmp_path)))  # an empty folder
