"""A tiny random-init SAM 3 of the real architecture + its real ``Sam3Processor``, saved with ``save_pretrained``.

transformers' SAM 3 image processor needs torchvision, so only the second CI environment (``.venv-tv``) builds it
(``tests/test_tv_sam3.py``). The ViT sees 56 px (4x4 patches of 14); the CLIP text tower reads a
character-level BPE vocabulary padded to SAM 3's fixed 32 tokens.
"""

from __future__ import annotations

from pathlib import Path

from tests.fixtures_models import char_clip_tokenizer

SAM3_SIZE = 56  # px: 4x4 ViT patches of 14


def make_tiny_sam3(directory: str | Path, seed: int = 0) -> Path:
    """Write a tiny ``Sam3Model`` (2-layer ViT, 1-layer DETR encoder/decoder, 8 queries) and its processor."""
    import torch
    from transformers import (
        Sam3Config,
        Sam3Model,
        Sam3Processor,
        Sam3VisionConfig,
        Sam3ViTConfig,
    )
    from transformers.models.sam3.image_processing_sam3 import Sam3ImageProcessor

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tokenizer, vocab, bos, eos = char_clip_tokenizer(directory, max_length=32)
    grid = SAM3_SIZE // 14
    vit = Sam3ViTConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
               image_size=SAM3_SIZE, patch_size=14, window_size=2, global_attn_indexes=[1],
               pretrain_image_size=SAM3_SIZE)
    vision = Sam3VisionConfig(backbone_config=vit, fpn_hidden_size=32,
                              backbone_feature_sizes=[[grid * 4, grid * 4], [grid * 2, grid * 2], [grid, grid]])
    text = dict(vocab_size=len(vocab), hidden_size=32, intermediate_size=64, projection_dim=32, num_hidden_layers=1,
                num_attention_heads=2, max_position_embeddings=32, bos_token_id=bos, eos_token_id=eos,
                pad_token_id=0)
    small = dict(hidden_size=32, num_attention_heads=2, intermediate_size=64)
    config = Sam3Config(
        vision_config=vision, text_config=text,
        geometry_encoder_config=dict(small, num_layers=1),
        detr_encoder_config=dict(small, num_layers=1),
        detr_decoder_config=dict(small, num_layers=1, num_queries=8),
        mask_decoder_config=dict(hidden_size=32, num_attention_heads=2),
    )
    torch.manual_seed(seed)
    Sam3Model(config).eval().save_pretrained(directory)
    image_processor = Sam3ImageProcessor(size={"height": SAM3_SIZE, "width": SAM3_SIZE})
    Sam3Processor(image_processor=image_processor, tokenizer=tokenizer).save_pretrained(directory)
    return directory
