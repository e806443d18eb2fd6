"""Tiny random-init models for offline tests, written with ``save_pretrained`` like real checkpoints.

Each function writes a complete model directory (config, weights, processor, tokenizer) that loads
through the real code path (``hf:<dir>`` spec -> registry -> ``fmmc.core.hub.load_pretrained``). Weights are
random, so outputs are meaningless but shapes, dtypes and plumbing are real. Reuse them from any test::

    from fixtures_models import shared_tiny_model

    @pytest.fixture(scope="session")
    def tiny_sam_dir(tmp_path_factory):
        return shared_tiny_model("sam", tmp_path_factory)   # built once per session, shared by all files

    build("segmenter", f"hf:{tiny_sam_dir}")   # or "grounding_dino" -> build("grounder", ...)

``make_tiny_grounding_dino(dir)`` / ``make_tiny_sam(dir)`` write a fresh copy (about 1-3 s on CPU).
The Grounding DINO tokenizer is a character-level WordPiece vocab.txt, so any lowercase text tokenizes.
The SAM has a 64 px input and 16 px low-res masks; the real processor path (resize, pad, post-process)
is unchanged.
"""

from __future__ import annotations

import string
from pathlib import Path
from typing import Any

# A character-level WordPiece vocabulary: any lowercase ASCII word tokenizes without [UNK].
_SPECIAL = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
_WORDS = ["a", "vase", "cup", "mug", "chair", "table", "spoon", "bottle", "object", "thing"]


def _write_vocab(path: Path) -> Path:
    chars = list(string.ascii_lowercase + string.digits)
    punct = list(".,;:!?'\"-()/&")
    tokens = _SPECIAL + punct + chars + [f"##{c}" for c in chars] + [w for w in _WORDS if w not in chars]
    path.write_text("\n".join(dict.fromkeys(tokens)) + "\n", encoding="utf-8")
    return path


def make_tiny_grounding_dino(directory: str | Path, seed: int = 0) -> Path:
    """Write a tiny Grounding DINO (Swin backbone, 2-layer BERT text tower) + processor to ``directory``."""
    import torch
    from transformers import (
        BertConfig,
        BertTokenizer,
        GroundingDinoConfig,
        GroundingDinoForObjectDetection,
        GroundingDinoImageProcessor,
        GroundingDinoProcessor,
        SwinConfig,
    )

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    _write_vocab(directory / "vocab.txt")
    tokenizer = BertTokenizer.from_pretrained(str(directory), do_lower_case=True)  # reads vocab.txt
    backbone = SwinConfig(
        embed_dim=16, depths=[1, 1, 1, 1], num_heads=[1, 1, 2, 2], window_size=2, image_size=64,
        out_features=["stage2", "stage3", "stage4"],
    )
    text = BertConfig(
        vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=64, max_position_embeddings=64,
    )
    config = GroundingDinoConfig(
        backbone_config=backbone, text_config=text, d_model=32, encoder_layers=1, decoder_layers=2,
        encoder_attention_heads=2, decoder_attention_heads=2, encoder_ffn_dim=64, decoder_ffn_dim=64,
        num_queries=30, num_feature_levels=3, encoder_n_points=2, decoder_n_points=2, max_text_len=32,
    )
    torch.manual_seed(seed)
    model = GroundingDinoForObjectDetection(config).eval()
    image_processor = GroundingDinoImageProcessor(size={"shortest_edge": 64, "longest_edge": 96})
    processor = GroundingDinoProcessor(image_processor=image_processor, tokenizer=tokenizer)
    model.save_pretrained(directory)
    processor.save_pretrained(directory)
    return directory


def make_tiny_sam(directory: str | Path, seed: int = 0) -> Path:
    """Write a tiny SAM (ViT 2 layers, 64 px input, 16 px masks) + processor to ``directory``."""
    import torch
    from transformers import (
        SamConfig,
        SamImageProcessor,
        SamMaskDecoderConfig,
        SamModel,
        SamProcessor,
        SamPromptEncoderConfig,
        SamVisionConfig,
    )

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    size, patch, width = 64, 16, 32
    vision = SamVisionConfig(
        hidden_size=32, output_channels=width, num_hidden_layers=2, num_attention_heads=2, image_size=size,
        patch_size=patch, window_size=2, global_attn_indexes=[1], num_pos_feats=width // 2, mlp_dim=64,
    )
    prompt = SamPromptEncoderConfig(hidden_size=width, image_size=size, patch_size=patch, mask_input_channels=4)
    decoder = SamMaskDecoderConfig(
        hidden_size=width, mlp_dim=64, num_hidden_layers=2, num_attention_heads=2, iou_head_hidden_dim=32
    )
    config = SamConfig(vision_config=vision, prompt_encoder_config=prompt, mask_decoder_config=decoder)
    torch.manual_seed(seed)
    model = SamModel(config).eval()
    image_processor = SamImageProcessor(
        size={"longest_edge": size}, pad_size={"height": size, "width": size},
        mask_size={"longest_edge": size // 4}, mask_pad_size={"height": size // 4, "width": size // 4},
    )
    processor = SamProcessor(image_processor=image_processor)
    model.save_pretrained(directory)
    processor.save_pretrained(directory)
    return directory


_MAKERS = {"grounding_dino": make_tiny_grounding_dino, "sam": make_tiny_sam}
_BUILT: dict[str, Path] = {}


def shared_tiny_model(kind: str, tmp_path_factory) -> Path:  # noqa: ANN001 - pytest.TempPathFactory
    """Build ``kind`` ("grounding_dino" or "sam") once per test session, whichever test file asks first.

        @pytest.fixture(scope="session")
        def tiny_sam_dir(tmp_path_factory):
            return shared_tiny_model("sam", tmp_path_factory)
    """
    if kind not in _BUILT:
        _BUILT[kind] = _MAKERS[kind](tmp_path_factory.mktemp(f"tiny_{kind}"))
    return _BUILT[kind]


# --- newer families (issue 14): tiny copies of the real architectures, each with the preprocessor_config.json
# values its hub checkpoints ship (written as JSON where the real image processor class needs torchvision) ---

DINOV3_PREPROCESSOR = {  # facebook/dinov3-*-pretrain-lvd1689m
    "image_processor_type": "DINOv3ViTImageProcessorFast", "do_resize": True, "size": {"height": 224, "width": 224},
    "resample": 2, "do_rescale": True, "rescale_factor": 1 / 255, "do_normalize": True,
    "image_mean": [0.485, 0.456, 0.406], "image_std": [0.229, 0.224, 0.225],
}


def _write_json(path: Path, data: dict) -> None:
    import json

    path.write_text(json.dumps(data, indent=2), encoding="utf-8")


def make_tiny_dinov3_vit(directory: str | Path, seed: int = 0) -> Path:
    """A tiny DINOv3 ViT: patch 16, 1 CLS + 4 register tokens, RoPE, 2 layers of width 32."""
    import torch
    from transformers import DINOv3ViTConfig, DINOv3ViTModel

    directory = Path(directory)
    torch.manual_seed(seed)
    cfg = DINOv3ViTConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                          patch_size=16, num_register_tokens=4, image_size=64)
    DINOv3ViTModel(cfg).eval().save_pretrained(directory)
    _write_json(directory / "preprocessor_config.json", DINOV3_PREPROCESSOR)
    return directory


def make_tiny_dinov3_convnext(directory: str | Path, seed: int = 0) -> Path:
    """A tiny DINOv3 ConvNeXt: 4 stages (stride 32), widths 8-32; its output is [pooled token, patch tokens]."""
    import torch
    from transformers import DINOv3ConvNextConfig, DINOv3ConvNextModel

    directory = Path(directory)
    torch.manual_seed(seed)
    DINOv3ConvNextModel(DINOv3ConvNextConfig(hidden_sizes=[8, 16, 24, 32], depths=[1, 1, 1, 1])).eval() \
        .save_pretrained(directory)
    _write_json(directory / "preprocessor_config.json", DINOV3_PREPROCESSOR)
    return directory


def make_tiny_siglip2_vision(directory: str | Path, seed: int = 0) -> Path:
    """A tiny SigLIP 2 NaFlex vision tower (patch 16, a 4x4 position grid, attention-pool head) + its
    real image processor (``Siglip2ImageProcessor``, PIL backend: no torchvision), max 16 patches."""
    import torch
    from transformers import Siglip2VisionConfig, Siglip2VisionModel
    from transformers.models.siglip2.image_processing_pil_siglip2 import Siglip2ImageProcessorPil

    directory = Path(directory)
    torch.manual_seed(seed)
    cfg = Siglip2VisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                              patch_size=16, num_patches=16)
    Siglip2VisionModel(cfg).eval().save_pretrained(directory)
    Siglip2ImageProcessorPil(max_num_patches=16, patch_size=16).save_pretrained(directory)
    return directory


_MAKERS.update({"dinov3_vit": make_tiny_dinov3_vit, "dinov3_convnext": make_tiny_dinov3_convnext,
                "siglip2_vision": make_tiny_siglip2_vision})


def _gemma_style_vocab() -> dict[str, int]:
    """Gemma's special tokens + single characters (``▁`` is the space): any ASCII text tokenizes."""
    vocab = {"<pad>": 0, "<eos>": 1, "<bos>": 2, "<unk>": 3, "<mask>": 4}
    for ch in ["\u2581", *string.ascii_lowercase, *string.ascii_uppercase, *string.digits, *".,;:!?'\"-()/&"]:
        vocab.setdefault(ch, len(vocab))
    return vocab


def make_tiny_siglip2(directory: str | Path, seed: int = 0) -> Path:
    """A tiny full SigLIP 2 NaFlex model (``Siglip2Model``: text tower with a 64-token context + vision tower)
    + ``Siglip2Tokenizer`` (Gemma BPE with lower-casing, left padding as transformers defines it)."""
    import torch
    from transformers import Siglip2Config, Siglip2Model, Siglip2Tokenizer

    directory = Path(directory)
    vocab = _gemma_style_vocab()
    Siglip2Tokenizer(vocab=vocab, merges=[]).save_pretrained(directory)
    tiny = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2)
    text = dict(tiny, vocab_size=len(vocab), max_position_embeddings=64, pad_token_id=0, bos_token_id=2, eos_token_id=1)
    torch.manual_seed(seed)
    Siglip2Model(Siglip2Config(text_config=text, vision_config=dict(tiny, patch_size=16, num_patches=16))).eval() \
        .save_pretrained(directory)
    return directory


def make_tiny_siglip2_fixres(directory: str | Path, seed: int = 0) -> Path:
    """A fixed-resolution SigLIP 2 as the hub ships it: a ``SiglipModel`` checkpoint with a Gemma tokenizer
    (``GemmaTokenizer``, which does not lower-case)."""
    import torch
    from transformers import GemmaTokenizer, SiglipConfig, SiglipModel

    directory = Path(directory)
    vocab = _gemma_style_vocab()
    GemmaTokenizer(vocab=vocab, merges=[]).save_pretrained(directory)
    tiny = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2)
    text = dict(tiny, vocab_size=len(vocab), max_position_embeddings=64, pad_token_id=0, bos_token_id=2, eos_token_id=1)
    torch.manual_seed(seed)
    SiglipModel(SiglipConfig(text_config=text, vision_config=dict(tiny, patch_size=16, image_size=64))).eval() \
        .save_pretrained(directory)
    return directory


_MAKERS.update({"siglip2": make_tiny_siglip2, "siglip2_fixres": make_tiny_siglip2_fixres})


def make_tiny_mm_grounding_dino(directory: str | Path, seed: int = 0) -> Path:
    """A tiny MM-Grounding-DINO (the LLMDet architecture too): Grounding DINO's tiny sizes and its processor
    (``GroundingDinoProcessor``, which transformers pairs with ``mm-grounding-dino``), the MM model class."""
    import torch
    from transformers import GroundingDinoConfig, MMGroundingDinoConfig, MMGroundingDinoForObjectDetection

    directory = Path(make_tiny_grounding_dino(directory, seed))  # processor, tokenizer and the tiny sizes
    gd = GroundingDinoConfig.from_pretrained(directory)
    keys = ("d_model", "encoder_layers", "decoder_layers", "encoder_attention_heads", "decoder_attention_heads",
            "encoder_ffn_dim", "decoder_ffn_dim", "num_queries", "num_feature_levels", "encoder_n_points",
            "decoder_n_points", "max_text_len")
    config = MMGroundingDinoConfig(backbone_config=gd.backbone_config, text_config=gd.text_config,
                                   **{k: getattr(gd, k) for k in keys})
    torch.manual_seed(seed)
    MMGroundingDinoForObjectDetection(config).eval().save_pretrained(directory)
    return directory


def char_clip_tokenizer(directory: Path, max_length: int) -> tuple[Any, dict[str, int], int, int]:
    """A character-level CLIP BPE tokenizer written to ``directory`` (pad "!" = id 0): (tokenizer, vocab, bos, eos)."""
    import json

    from transformers import CLIPTokenizer

    vocab = {"!": 0}
    for c in string.ascii_lowercase + string.digits:
        vocab.setdefault(c, len(vocab))
        vocab.setdefault(c + "</w>", len(vocab))
    bos, eos = vocab.setdefault("<|startoftext|>", len(vocab)), vocab.setdefault("<|endoftext|>", len(vocab))
    (directory / "vocab.json").write_text(json.dumps(vocab), encoding="utf-8")
    (directory / "merges.txt").write_text("#version: 0.2\n", encoding="utf-8")
    tokenizer = CLIPTokenizer(str(directory / "vocab.json"), str(directory / "merges.txt"),
                              model_max_length=max_length, pad_token="!")
    return tokenizer, vocab, bos, eos


def make_tiny_owlv2(directory: str | Path, seed: int = 0) -> Path:
    """A tiny OWLv2 (ViT 64 px / patch 16 -> 16 boxes, 2-layer text tower, 16-token queries) + its processor
    (``Owlv2ImageProcessor`` PIL backend: pad to square, resize; a character-level CLIP BPE tokenizer)."""

    import torch
    from transformers import (
        Owlv2Config,
        Owlv2ForObjectDetection,
        Owlv2ImageProcessorPil,
        Owlv2Processor,
    )

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    # "!" is the pad token, id 0; OWL treats a query whose first id is 0 as padding, so BOS must not be 0
    tokenizer, vocab, bos, eos = char_clip_tokenizer(directory, max_length=16)
    tiny = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2)
    text = dict(tiny, vocab_size=len(vocab), max_position_embeddings=16, bos_token_id=bos, eos_token_id=eos,
                pad_token_id=0)
    config = Owlv2Config(text_config=text, vision_config=dict(tiny, image_size=64, patch_size=16), projection_dim=32)
    torch.manual_seed(seed)
    model = Owlv2ForObjectDetection(config).eval()
    with torch.no_grad():  # a random box head gives zero-area boxes; a small one keeps them near the patch priors
        model.box_head.dense2.weight.mul_(0.01)
        model.box_head.dense2.bias.zero_()
    model.save_pretrained(directory)
    image_processor = Owlv2ImageProcessorPil(size={"height": 64, "width": 64})
    Owlv2Processor(image_processor=image_processor, tokenizer=tokenizer).save_pretrained(directory)
    return directory


_MAKERS.update({"mm_grounding_dino": make_tiny_mm_grounding_dino, "owlv2": make_tiny_owlv2})


def make_tiny_sam2(directory: str | Path, seed: int = 0) -> Path:
    """A tiny SAM 2 (Hiera 4 stages of widths 8-64, 64 px input, 16 px masks) + ``Sam2Processor``.

    transformers' SAM 2 image processor needs torchvision, so only the second CI environment runs it.
    """
    import torch
    from transformers import (
        Sam2Config,
        Sam2HieraDetConfig,
        Sam2MaskDecoderConfig,
        Sam2Model,
        Sam2Processor,
        Sam2PromptEncoderConfig,
        Sam2VisionConfig,
    )
    from transformers.models.sam2.image_processing_sam2 import Sam2ImageProcessor

    directory = Path(directory)
    # stage-change blocks (1, 2, 4) need a window >= 2; block 3 is the global-attention one
    hiera = Sam2HieraDetConfig(hidden_size=8, image_size=[64, 64], blocks_per_stage=[1, 1, 2, 1],
                               embed_dim_per_stage=[8, 16, 32, 64], num_attention_heads_per_stage=[1, 1, 1, 1],
                               window_size_per_stage=[4, 4, 4, 4], global_attention_blocks=[3],
                               window_positional_embedding_background_size=[2, 2])
    vision = Sam2VisionConfig(backbone_config=hiera, backbone_channel_list=[64, 32, 16, 8],
                              backbone_feature_sizes=[[16, 16], [8, 8], [4, 4]], fpn_hidden_size=32)
    config = Sam2Config(
        vision_config=vision, prompt_encoder_config=Sam2PromptEncoderConfig(hidden_size=32, image_size=64, patch_size=16),
        mask_decoder_config=Sam2MaskDecoderConfig(hidden_size=32, mlp_dim=64, num_attention_heads=2,
                                                  iou_head_hidden_dim=32),
    )
    torch.manual_seed(seed)
    Sam2Model(config).eval().save_pretrained(directory)
    image_processor = Sam2ImageProcessor(size={"height": 64, "width": 64}, mask_size={"height": 16, "width": 16})
    Sam2Processor(image_processor=image_processor).save_pretrained(directory)
    return directory


_MAKERS.update({"sam2": make_tiny_sam2})
