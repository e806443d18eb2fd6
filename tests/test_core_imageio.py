import io
import json

import numpy as np
import pytest
from PIL import Image

from fmmc.data.imageio import ImageError, box_to_mask, load_image, load_mask
from fmmc.data.validate import validate_dataset
from fmmc.taxonomy import load_taxonomy


def test_bad_files_name_the_file(tmp_path):
    empty = tmp_path / "empty.jpg"
    empty.write_bytes(b"")
    with pytest.raises(ImageError, match="empty.jpg: file is empty"):
        load_image(empty)
    txt = tmp_path / "notes.jpg"
    txt.write_text("hello")
    with pytest.raises(ImageError, match="notes.jpg: not an image"):
        load_image(txt)
    good = io.BytesIO()
    Image.new("RGB", (64, 64), (1, 2, 3)).save(good, "JPEG")
    trunc = tmp_path / "trunc.jpg"
    trunc.write_bytes(good.getvalue()[: len(good.getvalue()) // 2])
    with pytest.raises(ImageError, match="trunc.jpg: truncated or corrupt"):
        load_image(trunc)
    with pytest.raises(ImageError, match="missing.png: file not found"):
        load_image(tmp_path / "missing.png")


def test_decompression_bomb_refused(tmp_path):
    p = tmp_path / "big.png"
    Image.new("L", (3000, 3000)).save(p)
    with pytest.raises(ImageError, match="over the limit"):
        load_image(p, max_pixels=1_000_000)


@pytest.mark.parametrize("mode", ["CMYK", "I;16", "P", "RGBA", "LA", "L", "1"])
def test_modes_become_rgb(tmp_path, mode):
    img = Image.new("RGB", (20, 10), (200, 100, 50))
    if mode == "I;16":
        arr = (np.arange(200).reshape(10, 20) * 300).astype(np.uint16)
        src = Image.new("I;16", (20, 10))
        src.frombytes(arr.astype("<u2").tobytes())
        ext = "png"
    else:
        src = img.convert(mode)
        ext = "tiff" if mode == "CMYK" else "png"
    p = tmp_path / f"x.{ext}"
    src.save(p)
    out = load_image(p)
    assert out.mode == "RGB" and out.size == (20, 10)
    if mode == "I;16":
        a = np.asarray(out)[..., 0]
        assert a.min() == 0 and a.max() == 255  # rescaled to the full 8-bit range


def test_alpha_composited_on_white(tmp_path):
    p = tmp_path / "a.png"
    Image.new("RGBA", (4, 4), (255, 0, 0, 0)).save(p)
    assert np.asarray(load_image(p))[0, 0].tolist() == [255, 255, 255]


def test_exif_rotation_applied(tmp_path):
    img = Image.new("RGB", (40, 20), (10, 20, 30))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 CW on display
    p = tmp_path / "rot.jpg"
    img.save(p, exif=exif)
    assert load_image(p).size == (20, 40)


def test_masks(tmp_path):
    m = np.zeros((10, 20), np.uint8)
    m[2:5, 3:9] = 255
    p = tmp_path / "m.png"
    Image.fromarray(m).save(p)
    mask = load_mask(p, size=(20, 10))
    assert mask.dtype == bool and mask.sum() == 18
    with pytest.raises(ImageError, match="mask is 20x10 but its image is 30x10"):
        load_mask(p, size=(30, 10))
    Image.fromarray(np.zeros((10, 20), np.uint8)).save(p)
    with pytest.raises(ImageError, match="mask is empty"):
        load_mask(p)
    Image.fromarray((np.arange(200).reshape(10, 20) % 3 * 100).astype(np.uint8)).save(p)
    # the one mask rule: a non-binary mask is thresholded at MASK_THRESHOLD (128) by default
    assert load_mask(p).sum() == (np.arange(200) % 3 == 2).sum()
    assert load_mask(p, threshold=50).sum() == (np.arange(200) % 3 != 0).sum()


def test_box_mask_and_errors():
    m = box_to_mask((2, 1, 5, 3), (8, 4))
    assert m.sum() == 6 and m[1:3, 2:5].all()
    with pytest.raises(ValueError, match="zero or negative area"):
        box_to_mask((5, 1, 5, 3), (8, 4))
    with pytest.raises(ValueError, match="outside"):
        box_to_mask((10, 10, 20, 20), (8, 4))


def test_validator_reports_every_problem_with_line(tmp_path):
    Image.new("RGB", (8, 8)).save(tmp_path / "ok.png")
    Image.fromarray(np.full((4, 4), 255, np.uint8)).save(tmp_path / "small_mask.png")
    good = io.BytesIO()
    Image.new("RGB", (64, 64), (1, 2, 3)).save(good, "JPEG")
    (tmp_path / "broken.jpg").write_bytes(good.getvalue()[:300])
    lines = [
        {"file_name": "ok.png", "label": "metal"},
        {"file_name": "ok.png", "label": "metal"},  # duplicate id
        {"file_name": "ok.png", "label": "unobtainium", "id": "u"},
        {"file_name": "broken.jpg", "label": "wood"},
        {"file_name": "ok.png", "mask_file_name": "small_mask.png", "label": "wood"},
        "not json",
        {"label": "wood"},
    ]
    text = "".join((json.dumps(x) if not isinstance(x, str) else x) + "\n" for x in lines)
    (tmp_path / "metadata.jsonl").write_text(text)
    n, problems = validate_dataset(tmp_path, load_taxonomy("default"))
    assert n == 7
    by_line = {p.where.rsplit(":", 1)[1]: p.message for p in problems}
    assert "duplicate id" in by_line["2"]
    assert "unknown label 'unobtainium'" in by_line["3"]
    assert "broken.jpg" in by_line["4"] and "corrupt" in by_line["4"]
    assert "mask is 4x4 but its image is 8x8" in by_line["5"]
    assert "not valid JSON" in by_line["6"]
    assert "file_name" in by_line["7"]
    assert "1" not in by_line


def test_binary_check_is_the_unique_rule():
    """The mask rule's binary test (linear passes, no sort) says what ``np.unique`` says, for every dtype."""
    from fmmc.data.imageio import _binary

    rng = np.random.default_rng(0)
    cases = [np.zeros((5, 5), np.uint8), np.full((4, 4), 255, np.uint8), np.array([[0, 7], [7, 0]], np.uint16),
             np.array([[0, -1], [0, 0]], np.int16)]
    for k in range(40):
        dtype = (np.uint8, np.uint16, np.int32, np.float32)[k % 4]
        cases.append((rng.integers(0, 2 + k % 3, (7 + k, 9)) * (1 + k % 5)).astype(dtype))
    for a in cases:
        v = np.unique(a)
        assert _binary(a) == bool(len(v) <= 2 and v[0] == 0), a
