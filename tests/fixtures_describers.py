"""Tiny local describers for offline tests (issue 14, item 4): tiny VLMs of the real architectures with
word-level tokenizers and their real processors, written with ``save_pretrained`` so that they load through
fmmc's ``hf:<dir>`` describer path, and :func:`plain_chat_generate`, the plain-transformers reference they are
compared against. The vision/grounding/segmentation fixtures are in ``fixtures_models``.

``make_tiny_florence2`` and ``make_tiny_smolvlm`` need no torchvision; ``make_tiny_qwen_vl`` builds a video
processor, which does (the second CI environment, ``.venv-tv``).
"""

from __future__ import annotations

from pathlib import Path

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
