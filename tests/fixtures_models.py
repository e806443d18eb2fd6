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
