"""The local-VLM describer on a tiny random Llava (CLIP vision + Llama text) saved to disk and loaded back."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from fmmc.core.hub import WeightsUnavailableError
from fmmc.core.registry import build
from fmmc.data.records import Region
from fmmc.language.cache import DescriptionCache
from fmmc.language.describers import Describer, describe_regions

WORDS = ["<pad>", "<s>", "</s>", "<unk>", "<image>", "user", "assistant", ":"] + (
    "look at the region outlined in red main surface this image glossy matte metal wood smooth rough".split()
)
TEMPLATE = (
    "{% for m in messages %}{{ m['role'] }}: {% for c in m['content'] %}{% if c['type'] == 'image' %}<image> "
    "{% else %}{{ c['text'] }}{% endif %}{% endfor %}{{ '\\n' }}{% endfor %}{% if add_generation_prompt %}assistant: {% endif %}"
)


@pytest.fixture(scope="module")
def tiny_vlm(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import (
        CLIPImageProcessor,
        LlavaConfig,
        LlavaForConditionalGeneration,
        LlavaProcessor,
        PreTrainedTokenizerFast,
    )

    out = tmp_path_factory.mktemp("tiny-vlm")
    word_level = Tokenizer(models.WordLevel({w: i for i, w in enumerate(WORDS)}, unk_token="<unk>"))
    word_level.pre_tokenizer = pre_tokenizers.Whitespace()
    tok = PreTrainedTokenizerFast(tokenizer_object=word_level, bos_token="<s>", eos_token="</s>", pad_token="<pad>",
                                  unk_token="<unk>", extra_special_tokens={"image_token": "<image>"})
    tok.add_special_tokens({"additional_special_tokens": ["<image>"]})
    processor = LlavaProcessor(
        image_processor=CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}),
        tokenizer=tok, patch_size=16, vision_feature_select_strategy="default", chat_template=TEMPLATE,
        num_additional_image_tokens=1,
    )
    torch.manual_seed(0)
    cfg = LlavaConfig(
        vision_config=dict(model_type="clip_vision_model", hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                           num_attention_heads=2, image_size=32, patch_size=16),
        text_config=dict(model_type="llama", vocab_size=len(tok), hidden_size=32, intermediate_size=64,
                         num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=2,
                         max_position_embeddings=256, bos_token_id=1, eos_token_id=2, pad_token_id=0),
        image_token_index=tok.convert_tokens_to_ids("<image>"), vision_feature_layer=-1,
        vision_feature_select_strategy="default",
    )
    LlavaForConditionalGeneration(cfg).save_pretrained(out)
    processor.save_pretrained(out)
    return out


def _image_and_mask() -> tuple[Image.Image, np.ndarray]:
    img = Image.fromarray(np.random.default_rng(0).integers(0, 255, (60, 80, 3), dtype=np.uint8))
    mask = np.zeros((60, 80), dtype=bool)
    mask[10:40, 20:50] = True
    return img, mask


def test_tiny_vlm_describes_deterministically(tiny_vlm: Path):
    d = build("describer", f"hf:{tiny_vlm}", max_new_tokens=8)
    assert isinstance(d, Describer) and d.spec == f"hf:{tiny_vlm}"
    img, mask = _image_and_mask()
    text = d.describe(img, mask)
    assert isinstance(text, str) and text and len(text.split()) <= 8 and "\n" not in text
    assert d.describe(img, mask) == text  # greedy
    assert isinstance(d.describe(img, None), str)  # whole image
    # what the model was asked: the marked image plus the region prompt, through the chat template
    rendered = d.processor.apply_chat_template(d.messages([img], "look at the region outlined in red"),
                                               add_generation_prompt=True, tokenize=False)
    assert rendered == "user: <image> look at the region outlined in red\nassistant: "
    assert d.prompt_version != build("describer", f"hf:{tiny_vlm}", max_new_tokens=9).prompt_version


def test_tiny_vlm_threads_and_describe_regions(tiny_vlm: Path, tmp_path: Path):
    d = build("describer", f"hf:{tiny_vlm}", max_new_tokens=4)
    img, mask = _image_and_mask()
    ref = d.describe(img, mask)
    results: list[str] = []
    threads = [threading.Thread(target=lambda: results.append(d.describe(img, mask))) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == [ref] * 4
    img.save(tmp_path / "a.png")
    Image.fromarray(mask.astype(np.uint8) * 255).save(tmp_path / "a_mask.png")
    regions = [Region(image=tmp_path / "a.png", mask=tmp_path / "a_mask.png"), Region(image=tmp_path / "nope.png")]
    texts, failures = describe_regions(regions, d, DescriptionCache(tmp_path / "c.sqlite"), progress=False, workers=2)
    assert texts == [ref, None] and [f[0] for f in failures] == ["nope"]


def test_missing_vlm_fails_clearly(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(WeightsUnavailableError, match="HF_HUB_OFFLINE"):
        build("describer", "hf:no-such-org/no-such-vlm")
    with pytest.raises(ValueError, match="needs a VLM"):
        build("describer", "hf:")
