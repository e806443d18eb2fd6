"""Images per second of the synth engine: (a) generation and (b) auto-labelling, at configs/synth/default.yaml.

    python benchmarks/bench_synth.py                                  # tiny models, 64x64, CPU, < 2 min
    python benchmarks/bench_synth.py --scale real --n 16 --device cuda  # SD 2.1 / Grounding DINO-B / SAM-B shapes

Weights are RANDOM (these machines cannot download checkpoints), but the architectures are the real ones:
each model is built from its config, written with ``save_pretrained`` to a temp dir and loaded back through
fmmc's real path (``Generator`` -> ``load_pipeline`` -> diffusers; ``Labeler`` -> registry ``hf:<dir>``).
Compute per image therefore matches the real checkpoints; outputs are meaningless.

``--scale real``: UNet2DConditionModel / AutoencoderKL / CLIPTextModel with Stable Diffusion 2.1's configs
(OpenCLIP-H text tower, 23 layers; a locally written character-level tokenizer), 768x768, the default
scheduler (dpm++) and steps (30), fp16 on CUDA; Grounding DINO with a Swin-B backbone (embed 128, depths
2-2-18-2, window 12, 384 px) and a BERT-base text tower (the grounding-dino-base layout); SAM ``SamConfig()``
defaults (ViT-B, 1024 px). ``--scale tiny``: the builders of tests/fixtures_synth.py and fixtures_models.py.

Random weights make the label rules (thresholds) reject almost everything before SAM runs, so by default
the labeller's thresholds are opened (box/text threshold 0, min_det_score 0, any number of instances, any
mask score) so every image is grounded AND segmented; ``--default-thresholds`` keeps the config's values.
The generator's blank-image check is off (``blank_std=-1``) so every generated image is written and labelled.
One untimed warm-up batch runs before each timed stage.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))  # the tiny builders and the local tokenizer writer


# ---- model builders -------------------------------------------------------------------------------------
def build_real_sd(path: Path) -> Path:
    """Random-init Stable Diffusion 2.1 (768-v) with the published component configs."""
    import torch
    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from fixtures_synth import write_tiny_clip_tokenizer
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        sample_size=96, in_channels=4, out_channels=4, layers_per_block=2,
        block_out_channels=(320, 640, 1280, 1280), attention_head_dim=(5, 10, 20, 20),
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=1024, use_linear_projection=True, upcast_attention=True, norm_num_groups=32,
        flip_sin_to_cos=True, freq_shift=0, act_fn="silu", center_input_sample=False,
    )
    vae = AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4, layers_per_block=2, norm_num_groups=32,
        block_out_channels=(128, 256, 512, 512), sample_size=768, act_fn="silu",
        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
    )
    # OpenCLIP ViT-H/14 text tower as SD 2.x ships it (penultimate layer -> 23 layers kept). The real vocab is
    # 49408 BPE tokens; the local tokenizer is character level (ids < 514), so the embedding table is the real
    # size while the token ids differ: same compute per step (77 tokens, padded to max length).
    text_encoder = CLIPTextModel(CLIPTextConfig(
        vocab_size=49408, hidden_size=1024, intermediate_size=4096, num_hidden_layers=23, num_attention_heads=16,
        max_position_embeddings=77, hidden_act="gelu", projection_dim=512, bos_token_id=512, eos_token_id=513,
        pad_token_id=513,
    ))
    with tempfile.TemporaryDirectory() as tmp:
        tokenizer = CLIPTokenizer.from_pretrained(write_tiny_clip_tokenizer(tmp))
    scheduler = DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False,
                              set_alpha_to_one=False, steps_offset=1, prediction_type="v_prediction",
                              num_train_timesteps=1000)
    pipe = StableDiffusionPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
                                   scheduler=scheduler, safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False)
    pipe.save_pretrained(path)
    return path


def build_real_grounding_dino(path: Path) -> Path:
    """Random-init Grounding DINO, grounding-dino-base layout: Swin-B backbone, BERT-base text, 900 queries."""
    import torch
    from fixtures_models import _write_vocab
    from transformers import (
        BertConfig,
        BertTokenizer,
        GroundingDinoConfig,
        GroundingDinoForObjectDetection,
        GroundingDinoImageProcessor,
        GroundingDinoProcessor,
        SwinConfig,
    )

    path.mkdir(parents=True, exist_ok=True)
    _write_vocab(path / "vocab.txt")  # character-level WordPiece; the model keeps BERT's 30522-token table
    tokenizer = BertTokenizer.from_pretrained(str(path), do_lower_case=True)
    backbone = SwinConfig(embed_dim=128, depths=[2, 2, 18, 2], num_heads=[4, 8, 16, 32], window_size=12,
                          image_size=384, out_indices=[2, 3, 4])
    config = GroundingDinoConfig(backbone_config=backbone, text_config=BertConfig(), num_queries=900,
                                 num_feature_levels=4, max_text_len=256, d_model=256, encoder_layers=6,
                                 decoder_layers=6)
    torch.manual_seed(0)
    model = GroundingDinoForObjectDetection(config).eval()
    processor = GroundingDinoProcessor(image_processor=GroundingDinoImageProcessor(), tokenizer=tokenizer)
    model.save_pretrained(path)
    processor.save_pretrained(path)
    return path


def build_real_sam(path: Path) -> Path:
    """Random-init SAM ViT-B (``SamConfig()`` defaults) with the default 1024 px processor."""
    import torch
    from transformers import SamConfig, SamImageProcessor, SamModel, SamProcessor

    torch.manual_seed(0)
    SamModel(SamConfig()).eval().save_pretrained(path)
    SamProcessor(image_processor=SamImageProcessor()).save_pretrained(path)
    return path


def build_models(scale: str, tmp: Path) -> dict[str, Path]:
    if scale == "real":
        return {"sd": build_real_sd(tmp / "sd"), "grounder": build_real_grounding_dino(tmp / "gdino"),
                "segmenter": build_real_sam(tmp / "sam")}
    from fixtures_models import make_tiny_grounding_dino, make_tiny_sam
    from fixtures_synth import make_tiny_sd_pipeline

    return {"sd": make_tiny_sd_pipeline(tmp / "sd"), "grounder": make_tiny_grounding_dino(tmp / "gdino"),
            "segmenter": make_tiny_sam(tmp / "sam")}


# ---- timing wrappers --------------------------------------------------------------------------------------
class Timed:
    """Proxy that adds the wall time of the named methods (synchronising CUDA) to ``self.seconds``."""

    def __init__(self, inner: Any, methods: tuple[str, ...], sync: bool) -> None:
        self._inner, self._methods, self._sync = inner, methods, sync
        self.seconds, self.calls = 0.0, 0

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._inner, name)
        if name not in self._methods:
            return attr

        def timed(*args: Any, **kwargs: Any) -> Any:
            _sync(self._sync)
            t0 = time.perf_counter()
            try:
                return attr(*args, **kwargs)
            finally:
                _sync(self._sync)
                self.seconds += time.perf_counter() - t0
                self.calls += 1
        return timed

    def reset(self) -> None:
        self.seconds, self.calls = 0.0, 0


def _sync(cuda: bool) -> None:
    if cuda:
        import torch

        torch.cuda.synchronize()


def n_params(module: Any) -> int:
    return sum(p.numel() for p in module.parameters())


def fmt_params(n: int) -> str:
    return f"{n / 1e6:,.1f} M" if n >= 1e6 else f"{n / 1e6:.3f} M"


# ---- main -------------------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--scale", choices=("tiny", "real"), default="tiny")
    ap.add_argument("--n", type=int, default=8, help="timed images per stage (after one warm-up batch)")
    ap.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    ap.add_argument("--steps", type=int, default=None, help="default: generate.steps of the config (30)")
    ap.add_argument("--batch-size", type=int, default=None, help="generation batch (default: the config's, 4)")
    ap.add_argument("--config", default=str(ROOT / "configs/synth/default.yaml"))
    ap.add_argument("--size", type=int, default=None, help="image side (default: 768 real, 64 tiny)")
    ap.add_argument("--default-thresholds", action="store_true",
                    help="keep the label thresholds of the config (random weights: SAM then rarely runs)")
    ap.add_argument("--max-seconds", type=float, default=600.0,
                    help="stop a timed stage after the batch that crosses this many seconds")
    ap.add_argument("--json", default=None, help="also write the results here")
    args = ap.parse_args(argv)
    if args.n < 1:
        ap.error("--n must be >= 1")

    import torch

    from fmmc.synth.config import load_synth_config
    from fmmc.synth.generate import Generator, resolve_device
    from fmmc.synth.label import Labeler

    device = resolve_device(args.device)
    if device == "mps":
        device = "cpu"
    cuda = device.startswith("cuda")
    cfg = load_synth_config(args.config, [])
    size = args.size or (768 if args.scale == "real" else 64)
    gcfg = dataclasses.replace(cfg.generate, device=device, height=size, width=size, blank_std=-1.0,
                               steps=args.steps or cfg.generate.steps,
                               batch_size=args.batch_size or cfg.generate.batch_size)
    lcfg = cfg.label
    if not args.default_thresholds:
        lcfg = dataclasses.replace(lcfg, box_threshold=0.0, text_threshold=0.0, min_det_score=0.0,
                                   max_instances=10**6, min_mask_score=-1.0, min_area_frac=0.0, max_area_frac=1.0)
    lcfg = dataclasses.replace(lcfg, device=device)

    dev_name = torch.cuda.get_device_name(torch.device(device)) if cuda else "cpu"
    print(f"device: {device} ({dev_name}); torch {torch.__version__}, {torch.get_num_threads()} CPU threads")
    print(f"scale: {args.scale}; {size}x{size}, {gcfg.steps} steps, scheduler {gcfg.scheduler}, "
          f"guidance {gcfg.guidance}, generate batch {gcfg.batch_size}, generate dtype {gcfg.dtype}, "
          f"label dtype {lcfg.dtype}, label batch {lcfg.batch_size}, n={args.n}")
    results: dict[str, Any] = {"device": dev_name, "scale": args.scale, "size": size, "steps": gcfg.steps,
                               "batch_size": gcfg.batch_size, "n": args.n}

    with tempfile.TemporaryDirectory(prefix="bench_synth_") as tmpdir:
        tmp = Path(tmpdir)
        t0 = time.perf_counter()
        paths = build_models(args.scale, tmp / "models")
        print(f"built + saved random-init models in {time.perf_counter() - t0:.1f} s")

        # (a) generation ------------------------------------------------------------------------------------
        t0 = time.perf_counter()
        gen = Generator(gcfg, root=tmp / "out", model_id=str(paths["sd"]))
        print(f"loaded pipeline {type(gen.pipe).__name__} in {time.perf_counter() - t0:.1f} s "
              f"(scheduler {gen.scheduler}, dtype {gen.pipe.unet.dtype})")
        counts = {k: n_params(getattr(gen.pipe, k)) for k in ("unet", "vae", "text_encoder")}
        print("params: " + ", ".join(f"{k} {fmt_params(v)}" for k, v in counts.items()))
        results["params"] = dict(counts)

        def item(i: int) -> dict[str, Any]:
            return {"id": f"bench-{i:05d}", "label": "ceramic", "seed": 1000 + i, "object": "vase",
                    "prompt": "a photo of a porcelain ceramic vase, the whole object in view, natural light"}

        gen([item(-(j + 1)) for j in range(gcfg.batch_size)])  # warm-up (untimed)
        if cuda:
            torch.cuda.reset_peak_memory_stats()
        done: list[dict[str, Any]] = []
        _sync(cuda)
        t0 = time.perf_counter()
        while len(done) < args.n and time.perf_counter() - t0 < args.max_seconds:
            done.extend(gen([item(len(done) + j) for j in range(min(gen.batch_size, args.n - len(done)))]))
        _sync(cuda)
        gen_s = time.perf_counter() - t0
        ok = [r for r in done if r["status"] == "ok"]
        results["generate"] = {"images": len(done), "seconds": gen_s, "img_per_s": len(done) / gen_s,
                               "s_per_img": gen_s / len(done), "ok": len(ok), "final_batch_size": gen.batch_size}
        line = (f"generate: {len(done)} images in {gen_s:.2f} s -> {len(done) / gen_s:.3f} img/s, "
                f"{gen_s / len(done):.3f} s/img (batch {gen.batch_size}, {len(ok)} written)")
        if cuda:
            peak = torch.cuda.max_memory_allocated() / 2**30
            results["generate"]["peak_gib"] = peak
            line += f"; peak GPU memory {peak:.2f} GiB"
        print(line)
        del gen
        if cuda:
            torch.cuda.empty_cache()

        # (b) labelling ------------------------------------------------------------------------------------
        from fmmc.core.registry import build

        grounder = Timed(build("grounder", f"hf:{paths['grounder']}", device=device, dtype=lcfg.dtype),
                         ("detect_batch", "detect"), cuda)
        segmenter = Timed(build("segmenter", f"hf:{paths['segmenter']}", device=device, dtype=lcfg.dtype),
                          ("segment",), cuda)
        g_params = n_params(grounder.model) if hasattr(grounder, "model") else 0
        s_params = n_params(segmenter.model) if hasattr(segmenter, "model") else 0
        print(f"params: grounding dino {fmt_params(g_params)}, sam {fmt_params(s_params)}")
        results["params"].update(grounder=g_params, segmenter=s_params)
        labeler = Labeler(lcfg, root=tmp / "out", grounder=grounder, segmenter=segmenter)
        items = [dict(r) for r in ok] or []
        if not items:
            print("labelling: no generated image was written; nothing to label")
            return 1
        items = (items * (args.n // len(items) + 1))[:args.n]
        labeler(items[:min(len(items), lcfg.batch_size)])  # warm-up (untimed)
        grounder.reset()
        segmenter.reset()
        if cuda:
            torch.cuda.reset_peak_memory_stats()
        out: list[dict[str, Any]] = []
        _sync(cuda)
        t0 = time.perf_counter()
        while len(out) < len(items) and time.perf_counter() - t0 < args.max_seconds:
            out.extend(labeler(items[len(out):len(out) + lcfg.batch_size]))
        _sync(cuda)
        lab_s = time.perf_counter() - t0
        n = len(out)
        statuses = {s: sum(r["status"] == s for r in out) for s in ("ok", "rejected", "failed")}
        results["label"] = {"images": n, "seconds": lab_s, "img_per_s": n / lab_s, "s_per_img": lab_s / n,
                            "grounding_s_per_img": grounder.seconds / n,
                            "sam_calls": segmenter.calls,
                            "sam_s_per_call": segmenter.seconds / max(segmenter.calls, 1), "statuses": statuses}
        print(f"label: {n} images in {lab_s:.2f} s -> {n / lab_s:.3f} img/s, {lab_s / n:.3f} s/img "
              f"(statuses {statuses})")
        print(f"  grounding (Grounding DINO, batch {lcfg.batch_size}): {grounder.seconds / n:.3f} s/img "
              f"over {grounder.calls} calls")
        print(f"  segmentation (SAM, one box per image): {segmenter.calls} calls, "
              f"{segmenter.seconds / max(segmenter.calls, 1):.3f} s/call"
              + ("" if segmenter.calls == n else "  [SAM did not run for every image]"))
        print(f"  rest (image read, rules, mask PNG): {(lab_s - grounder.seconds - segmenter.seconds) / n:.3f} s/img")
        if cuda:
            peak = torch.cuda.max_memory_allocated() / 2**30
            results["label"]["peak_gib"] = peak
            print(f"  peak GPU memory {peak:.2f} GiB")
        if args.json:
            Path(args.json).write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
