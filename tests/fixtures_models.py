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


def make_tiny_owlv2(directory: str | Path, seed: int = 0) -> Path:
    """A tiny OWLv2 (ViT 64 px / patch 16 -> 16 boxes, 2-layer text tower, 16-token queries) + its processor
    (``Owlv2ImageProcessor`` PIL backend: pad to square, resize; a character-level CLIP BPE tokenizer)."""
    import json

    import torch
    from transformers import (
        CLIPTokenizer,
        Owlv2Config,
        Owlv2ForObjectDetection,
        Owlv2ImageProcessorPil,
        Owlv2Processor,
    )

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    vocab = {"!": 0}  # the pad token; OWL treats a query whose first id is 0 as padding, so BOS must not be 0
    for c in string.ascii_lowercase + string.digits:
        vocab.setdefault(c, len(vocab))
        vocab.setdefault(c + "</w>", len(vocab))
    bos, eos = vocab.setdefault("<|startoftext|>", len(vocab)), vocab.setdefault("<|endoftext|>", len(vocab))
    (directory / "vocab.json").write_text(json.dumps(vocab), encoding="utf-8")
    (directory / "merges.txt").write_text("#version: 0.2\n", encoding="utf-8")
    tokenizer = CLIPTokenizer(str(directory / "vocab.json"), str(directory / "merges.txt"), model_max_length=16,
                              pad_token="!")
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


# --- local describers (issue 14, item 4): tiny VLMs with word-level tokenizers and their real processors ---

_DESCRIBER_WORDS = (
    "look at the region outlined in red first image second close-up of it main surface this a what does describe "
    "with paragraph is shown glossy matte metal wood smooth rough texture colour one sentence . , ? : ( )"
).split()


def _word_tokenizer(special: list[str], extra_special: dict[str, str], added: list[str] = ()):  # noqa: ANN202
    """A ``PreTrainedTokenizerFast`` over ``special + _DESCRIBER_WORDS + added`` (whitespace-split words)."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = list(dict.fromkeys([*special, *_DESCRIBER_WORDS, *added]))
    level = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    level.pre_tokenizer = pre_tokenizers.Whitespace()
    tok = PreTrainedTokenizerFast(tokenizer_object=level, unk_token="<unk>", extra_special_tokens=extra_special)
    tok.add_special_tokens({"additional_special_tokens": [w for w in special if w != "<unk>"] + list(added)})
    return tok


def make_tiny_florence2(directory: str | Path, seed: int = 0) -> Path:
    """A tiny Florence-2 (DaViT 4 stages of widths 8-32, 64 px input, 1-layer BART) + ``Florence2Processor``.

    The processor is the real one over a PIL ``CLIPImageProcessor`` (as florence-community/Florence-2-base
    ships, at 64 instead of 768 px; 2x2 patches + 1 = 5 image tokens) and a word-level tokenizer with the
    1000 ``<loc_*>`` tokens; no torchvision. The ``</s>`` and ``<loc_*>`` embedding rows are zero.
    """
    import torch
    from transformers import (
        CLIPImageProcessorPil,
        Florence2Config,
        Florence2ForConditionalGeneration,
        Florence2Processor,
    )

    directory = Path(directory)
    tok = _word_tokenizer(["<pad>", "<s>", "</s>", "<unk>", "<image>"], {"image_token": "<image>"},
                          [f"<loc_{i}>" for i in range(1000)])
    tok.bos_token, tok.eos_token, tok.pad_token = "<s>", "</s>", "<pad>"
    image_processor = CLIPImageProcessorPil(
        size={"height": 64, "width": 64}, do_center_crop=False, crop_size={"height": 64, "width": 64}, resample=3,
        image_mean=[0.485, 0.456, 0.406], image_std=[0.229, 0.224, 0.225],
    )
    image_processor.image_seq_length = 5
    config = Florence2Config(
        vision_config=dict(depths=[1, 1, 1, 1], embed_dim=[8, 16, 16, 32], num_heads=[1, 2, 2, 2],
                           num_groups=[1, 2, 2, 2], window_size=2, projection_dim=32, drop_path_rate=0.0),
        text_config=dict(vocab_size=len(tok), d_model=32, encoder_layers=1, decoder_layers=1, encoder_attention_heads=2,
                         decoder_attention_heads=2, encoder_ffn_dim=64, decoder_ffn_dim=64, max_position_embeddings=128,
                         pad_token_id=0, bos_token_id=1, eos_token_id=2, decoder_start_token_id=2),
        image_token_id=tok.convert_tokens_to_ids("<image>"),
    )
    torch.manual_seed(seed)
    model = Florence2ForConditionalGeneration(config).eval()
    with torch.no_grad():  # tied lm head: zero rows score 0, so the random decoder writes words, not </s> or boxes
        model.get_input_embeddings().weight[[2, *range(len(tok) - 1000, len(tok))]] = 0.0
    model.save_pretrained(directory)
    Florence2Processor(image_processor=image_processor, tokenizer=tok).save_pretrained(directory)
    return directory


SMOLVLM_TEMPLATE = (  # HuggingFaceTB/SmolVLM-256M-Instruct's chat template
    "<|im_start|>{% for message in messages %}{{message['role'] | capitalize}}{% if message['content'][0]['type'] "
    "== 'image' %}{{':'}}{% else %}{{': '}}{% endif %}{% for line in message['content'] %}{% if line['type'] == "
    "'text' %}{{line['text']}}{% elif line['type'] == 'image' %}{{ '<image>' }}{% endif %}{% endfor %}"
    "<end_of_utterance>\n{% endfor %}{% if add_generation_prompt %}{{ 'Assistant:' }}{% endif %}"
)


def make_tiny_smolvlm(directory: str | Path, seed: int = 0) -> Path:
    """A tiny SmolVLM as its hub checkpoints are: ``Idefics3ForConditionalGeneration`` (SigLIP-style vision 32 px,
    patch 8, pixel shuffle 2 -> 4 tokens per tile; 1-layer Llama) + the real ``Idefics3Processor``.

    The PIL image processor splits a 64 px (longest edge) image into 32 px tiles plus a global view, as the real
    one does at 2048/512 px; no torchvision. (SmolVLM2, ``model_type`` smolvlm, needs torchvision and num2words.)
    """
    import torch
    from transformers import (
        Idefics3Config,
        Idefics3ForConditionalGeneration,
        Idefics3ImageProcessorPil,
        Idefics3Processor,
    )

    directory = Path(directory)
    special = ["<pad>", "<|im_start|>", "<end_of_utterance>", "<unk>", "<image>", "<fake_token_around_image>",
               "<global-img>", "User", "Assistant", "<row_1_col_1>", "<row_1_col_2>", "<row_2_col_1>", "<row_2_col_2>"]
    tok = _word_tokenizer(special, {"image_token": "<image>", "fake_image_token": "<fake_token_around_image>",
                                    "global_image_token": "<global-img>", "end_of_utterance_token": "<end_of_utterance>"})
    tok.bos_token, tok.eos_token, tok.pad_token = "<|im_start|>", "<end_of_utterance>", "<pad>"
    image_processor = Idefics3ImageProcessorPil(size={"longest_edge": 64}, max_image_size={"longest_edge": 32},
                                                do_image_splitting=True)
    config = Idefics3Config(
        vision_config=dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                           image_size=32, patch_size=8),
        text_config=dict(model_type="llama", vocab_size=len(tok), hidden_size=32, intermediate_size=64,
                         num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=512,
                         bos_token_id=1, eos_token_id=2, pad_token_id=0),
        image_token_id=tok.convert_tokens_to_ids("<image>"), scale_factor=2, pad_token_id=0,
    )
    torch.manual_seed(seed)
    Idefics3ForConditionalGeneration(config).eval().save_pretrained(directory)
    Idefics3Processor(image_processor=image_processor, tokenizer=tok, image_seq_len=4,
                      chat_template=SMOLVLM_TEMPLATE).save_pretrained(directory)
    return directory


QWEN_VL_TEMPLATE = (  # the image/text part of Qwen2.5-VL-Instruct's chat template (its default system turn included)
    "{% if messages[0]['role'] != 'system' %}<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{% for c in message['content'] %}"
    "{% if c['type'] == 'image' %}<|vision_start|><|image_pad|><|vision_end|>{% else %}{{ c['text'] }}{% endif %}"
    "{% endfor %}<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def make_tiny_qwen_vl(directory: str | Path, version: str = "2.5", seed: int = 0) -> Path:
    """A tiny Qwen2.5-VL (``version="2.5"``, patch 14) or Qwen3-VL (``"3"``, patch 16, deepstack) + its real processor.

    2-block vision tower of width 16, 2x2 patch merging, 1-layer text model (head_dim 16, M-RoPE sections
    summing to 8). Images are resized between 4 and 64 merged patches. The processor includes a video
    processor, which needs torchvision: only the second CI environment builds it.
    """
    import torch
    import transformers
    from transformers import Qwen2VLImageProcessor

    directory = Path(directory)
    special = ["<pad>", "<|im_start|>", "<|im_end|>", "<unk>", "<|image_pad|>", "<|video_pad|>", "<|vision_start|>",
               "<|vision_end|>", "system", "user", "assistant", "You", "are", "helpful"]
    tok = _word_tokenizer(special, {"image_token": "<|image_pad|>", "video_token": "<|video_pad|>"})
    tok.eos_token, tok.pad_token = "<|im_end|>", "<pad>"
    ids = {t: tok.convert_tokens_to_ids(t) for t in special}
    text = dict(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                num_key_value_heads=2, head_dim=16, max_position_embeddings=1024, bos_token_id=ids["<|im_start|>"],
                eos_token_id=ids["<|im_end|>"],
                pad_token_id=0)
    tokens = dict(bos_token_id=ids["<|im_start|>"], image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"],
                  vision_start_token_id=ids["<|vision_start|>"], vision_end_token_id=ids["<|vision_end|>"])
    vision = dict(depth=2, hidden_size=16, intermediate_size=32, num_heads=2, out_hidden_size=32, spatial_merge_size=2,
                  temporal_patch_size=2)
    if version not in ("2.5", "3"):
        raise ValueError(f"version {version!r}: use '2.5' or '3'")
    name = {"2.5": "Qwen2_5_VL", "3": "Qwen3VL"}[version]
    Config, Model, Processor = (getattr(transformers, f"{name}{s}") for s in ("Config", "ForConditionalGeneration",
                                                                              "Processor"))
    VideoProcessor = getattr(transformers, {"2.5": "Qwen2VLVideoProcessor", "3": "Qwen3VLVideoProcessor"}[version])
    if version == "2.5":
        patch = 14
        text["rope_parameters"] = {"rope_type": "default", "mrope_section": [2, 3, 3], "rope_theta": 10000.0}
        vision.update(patch_size=patch, window_size=56, fullatt_block_indexes=[1])
    else:
        patch = 16
        text["rope_parameters"] = {"rope_type": "default", "mrope_section": [4, 2, 2], "mrope_interleaved": True,
                                   "rope_theta": 10000.0}
        vision.update(patch_size=patch, num_position_embeddings=64, deepstack_visual_indexes=[0])
    unit = (patch * 2) ** 2  # pixels per merged patch
    image_processor = Qwen2VLImageProcessor(size={"shortest_edge": 4 * unit, "longest_edge": 64 * unit},
                                            patch_size=patch, merge_size=2, temporal_patch_size=2)
    video_processor = VideoProcessor(patch_size=patch, merge_size=2, temporal_patch_size=2)
    torch.manual_seed(seed)
    Model(Config(text_config=text, vision_config=vision, **tokens)).eval().save_pretrained(directory)
    Processor(image_processor=image_processor, tokenizer=tok, video_processor=video_processor,
              chat_template=QWEN_VL_TEMPLATE).save_pretrained(directory)
    return directory


def plain_chat_generate(directory: str | Path, images: list, text: str, max_new_tokens: int):  # noqa: ANN201
    """Plain transformers for a chat VLM: chat template -> processor(text, images) -> greedy ``generate``; the
    reply's token ids ``[1, n]``. The reference that ``hf:`` describer tests compare against."""
    import torch
    from transformers import AutoModelForImageTextToText, AutoProcessor

    processor = AutoProcessor.from_pretrained(directory)
    model = AutoModelForImageTextToText.from_pretrained(directory).eval()
    content = [{"type": "image"} for _ in images] + [{"type": "text", "text": text}]
    prompt = processor.apply_chat_template([{"role": "user", "content": content}], add_generation_prompt=True)
    inputs = processor(text=prompt, images=images, return_tensors="pt")
    with torch.inference_mode():
        out = model.generate(**inputs, do_sample=False, max_new_tokens=max_new_tokens)
    return out[:, inputs["input_ids"].shape[1]:]
