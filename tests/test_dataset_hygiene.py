"""Datasets as they arrive from editors and the internet: BOMs, CRLF, empty files, corrupt images, paths that
leave the dataset folder, and other input edges. Each problem is one line naming the file (and line)."""

from __future__ import annotations

import errno
import io
import json
import random
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import fmmc.data.dataset as dataset_module
from fmmc.cli.main import main
from fmmc.data.dataset import DatasetError, load_dataset, parse_line, write_dataset
from fmmc.data.imageio import ImageError, image_size, load_image, load_mask
from fmmc.data.readers.spec import load_test_set
from fmmc.data.records import Region
from fmmc.data.regions import load_region
from fmmc.data.validate import validate_dataset


def _image(path: Path, size: tuple[int, int] = (24, 16), seed: int = 0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)).save(path)
    return path


def _dataset(root: Path, lines: list[object], raw: bytes | None = None) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    text = "".join((x if isinstance(x, str) else json.dumps(x)) + "\n" for x in lines)
    (root / "metadata.jsonl").write_bytes(text.encode() if raw is None else raw)
    return root


def _one_line(e: BaseException) -> str:
    text = str(e)
    assert "\n" not in text
    return text


# ----------------------------------------------------------------------------------- 1. BOM and CRLF
def test_bom_and_crlf_metadata_are_read(tmp_path):
    _image(tmp_path / "ds" / "a.png")
    _image(tmp_path / "ds" / "b.png", seed=1)
    body = '{"file_name": "a.png", "label": "wood", "split": "test"}\r\n\r\n{"file_name": "b.png", "label": "metal", "split": "test"}\r\n'
    ds = _dataset(tmp_path / "ds", [], raw=b"\xef\xbb\xbf" + body.encode())
    regions = load_dataset(ds)
    assert [r.image.name for r in regions] == ["a.png", "b.png"] and regions[1].label == "metal"
    assert validate_dataset(ds) == (2, [])
    assert [r.id for r in load_test_set(f"jsonl:{ds}").regions] == ["a.png", "b.png"]  # the jsonl: reader too
    # a BOM alone on the first line is a blank line; CR-only line endings number lines as an editor does
    _dataset(ds, [], raw=b"\xef\xbb\xbf\r\n" + body.replace("\r\n", "\r").encode())
    assert validate_dataset(ds) == (2, [])


# ----------------------------------------------------------------------------------- 2. empty datasets
@pytest.mark.parametrize("raw", [b"", b"\n\n  \r\n\t\n", b"\xef\xbb\xbf"], ids=["0 bytes", "blank lines", "BOM only"])
def test_empty_metadata_is_an_error(tmp_path, capsys, raw):
    ds = _dataset(tmp_path / "ds", [], raw=raw)
    meta = ds / "metadata.jsonl"
    with pytest.raises(DatasetError) as e:
        load_dataset(ds)
    msg = _one_line(e.value)
    assert str(meta) in msg and "has no lines" in msg and '"file_name"' in msg and "docs/dataset-format.md" in msg
    n, problems = validate_dataset(ds)
    assert n == 0 and len(problems) == 1 and "has no lines" in str(problems[0])
    assert main(["validate", str(ds)]) == 1
    assert "has no lines" in capsys.readouterr().out


# ----------------------------------------------------------------------------------- 3. corrupt image bytes
def _variants(data: bytes, rng: random.Random, n: int) -> list[bytes]:
    """Truncations and 0x00/0xff bytes at every header offset, then random truncations, byte flips and splices."""
    out = [data[:k] for k in range(1, min(len(data), 80))]
    out += [data[:i] + bytes([v]) + data[i + 1:] for i in range(min(len(data), 64)) for v in (0x00, 0xFF)]
    for k in range(n):
        d = bytearray(data)
        if k % 3 == 0:
            d = d[: rng.randrange(1, len(d))]
        elif k % 3 == 1:
            for _ in range(rng.randint(1, 6)):
                d[rng.randrange(min(len(d), 120) if rng.random() < 0.7 else len(d))] = rng.randrange(256)
        else:
            i = rng.randrange(len(d))
            d[i:i + rng.randint(1, 12)] = bytes(rng.randrange(256) for _ in range(rng.randint(0, 12)))
        out.append(bytes(d))
    return out


def test_fuzzed_images_raise_image_error_naming_the_file(tmp_path):
    rng = random.Random(1234)
    arr = np.random.default_rng(0).integers(0, 255, (24, 32, 3), dtype=np.uint8)
    mask = np.zeros((24, 32), np.uint8)
    mask[4:20, 6:26] = 255
    sources = {}
    for fmt in ("JPEG", "PNG"):
        buf = io.BytesIO()
        Image.fromarray(arr).save(buf, fmt)
        sources[fmt] = buf.getvalue()
    buf = io.BytesIO()
    Image.fromarray(mask).save(buf, "PNG")
    sources["mask"] = buf.getvalue()
    good_image = _image(tmp_path / "good.png", (32, 24))
    escaped = []
    for fmt, data in sources.items():
        for k, variant in enumerate(_variants(data, rng, 150)):
            path = tmp_path / f"fuzz_{fmt}_{k}.bin"
            path.write_bytes(variant)
            calls = [(load_mask, path), (image_size, path), (load_region, Region(image=good_image, mask=path))] \
                if fmt == "mask" else [(load_image, path), (load_region, Region(image=path)), (image_size, path)]
            for call, arg in calls:
                try:
                    call(arg)
                except ImageError as e:
                    if path.name not in str(e) or "\n" in str(e):
                        escaped.append(f"{path.name}: message {e}")
                except Exception as e:  # noqa: BLE001 - the point of the test
                    escaped.append(f"{path.name}: {type(e).__name__}: {e}")
            path.unlink()
    assert not escaped, f"{len(escaped)} escapes, e.g. {escaped[:5]}"


def test_known_decoder_failures_are_image_errors(tmp_path):
    """Cases the fuzzing found: PNG "Truncated IHDR chunk" (a ValueError), a PPM header that is no number."""
    buf = io.BytesIO()
    Image.new("RGB", (8, 8)).save(buf, "PNG")
    png = tmp_path / "ihdr.png"
    png.write_bytes(buf.getvalue()[:16] + b"\x00\x00\x00\x01")
    ppm = tmp_path / "bad.ppm"
    ppm.write_bytes(b"P6\n5\x7f 8\n255\n" + b"\x00" * 200)
    for path in (png, ppm):
        for call in (load_image, load_mask, image_size):
            with pytest.raises(ImageError, match=path.name) as e:
                call(path)
            assert e.value.path == str(path) and e.value.problem and e.value.fix
    with pytest.raises(ImageError, match="is a folder"):
        load_image(tmp_path)


# ----------------------------------------------------------------------------------- 4. paths leaving the folder
@pytest.fixture
def outside(tmp_path) -> Path:
    return _image(tmp_path / "private" / "secret.png")


@pytest.mark.parametrize("key", ["file_name", "mask_file_name"])
@pytest.mark.parametrize("how", ["dotdot", "absolute", "dotdot-inside-name"])
def test_paths_outside_the_dataset_are_refused(tmp_path, outside, monkeypatch, capsys, key, how):
    monkeypatch.delenv("FMMC_ALLOW_OUTSIDE_PATHS", raising=False)
    ds = tmp_path / "ds"
    _image(ds / "a.png", (24, 16))
    (ds / "images").mkdir()
    name = {"dotdot": "../private/secret.png", "absolute": str(outside),
            "dotdot-inside-name": "images/../../private/secret.png"}[how]
    line = {"file_name": "a.png", "label": "wood", key: name}
    _dataset(ds, [{"file_name": "a.png", "label": "wood", "id": "ok"}, line])
    with pytest.raises(DatasetError) as e:
        load_dataset(ds)
    msg = _one_line(e.value)
    for part in (f"{ds / 'metadata.jsonl'}:2", key, repr(name), "outside the dataset folder", "--allow-outside-paths",
                 "allow_outside_root=True", "FMMC_ALLOW_OUTSIDE_PATHS=1"):
        assert part in msg, part
    n, problems = validate_dataset(ds)
    assert n == 2 and [p.where for p in problems] == [f"{ds / 'metadata.jsonl'}:2"]
    assert "outside the dataset folder" in problems[0].message
    with pytest.raises(DatasetError, match="outside the dataset folder"):
        load_test_set(f"jsonl:{ds}")
    assert main(["validate", str(ds)]) == 1
    capsys.readouterr()
    # the opt-ins: a parameter, the CLI flag, the environment variable
    assert len(load_dataset(ds, allow_outside_root=True)) == 2
    assert len(load_test_set(f"jsonl:{ds}", allow_outside_root=True).regions) == 2
    assert main(["validate", str(ds), "--allow-outside-paths"]) == 0
    monkeypatch.setenv("FMMC_ALLOW_OUTSIDE_PATHS", "1")
    assert len(load_dataset(ds)) == 2 and validate_dataset(ds, check_files=False)[1] == []
    monkeypatch.setenv("FMMC_ALLOW_OUTSIDE_PATHS", "0")
    with pytest.raises(DatasetError, match="outside"):
        load_dataset(ds)


def test_paths_inside_the_folder_are_fine(tmp_path, outside, monkeypatch):
    ds = tmp_path / "ds"
    _image(ds / "images" / "a.png")
    _dataset(ds, [{"file_name": "images/../images/a.png", "id": "dots"}, {"file_name": str(ds / "images" / "a.png")},
                  {"file_name": "./images/a.png", "id": "dot"}, {"file_name": "images/link.png"}])
    (ds / "images" / "link.png").symlink_to(outside)  # a link in the folder is its content (HF hub snapshots)
    regions = load_dataset(ds)
    assert {r.image for r in regions[:3]} == {ds / "images" / "a.png"}
    assert validate_dataset(ds) == (4, [])
    monkeypatch.chdir(tmp_path)  # a relative dataset path stays relative
    assert load_dataset("ds")[0].image == Path("ds/images/a.png")


def test_engine_workers_keep_absolute_paths(tmp_path, outside):
    """fmmc.engine sends regions with absolute paths and parses them with root "/": not confined."""
    region = parse_line({"file_name": str(outside), "mask_file_name": str(outside), "id": "x"}, Path("/"), "item 'x'")
    assert region.image == outside and region.mask == outside


def test_write_dataset_links_files_outside_its_folder(tmp_path, outside, monkeypatch):
    monkeypatch.delenv("FMMC_ALLOW_OUTSIDE_PATHS", raising=False)
    inside = _image(tmp_path / "ds" / "images" / "in.png", seed=2)
    write_dataset(tmp_path / "ds", [Region(image=outside, label="wood", id="out"),
                                    Region(image=inside, mask=outside, label="metal", id="in")])
    lines = [json.loads(x) for x in (tmp_path / "ds" / "metadata.jsonl").read_text().splitlines()]
    assert lines[1]["file_name"] == "images/in.png"
    assert all(not Path(ln[k]).is_absolute() and ".." not in ln[k] for ln in lines for k in ln if k.endswith("name"))
    back = load_dataset(tmp_path / "ds")
    assert back[0].image.resolve() == outside.resolve() and back[1].mask.resolve() == outside.resolve()
    assert np.array_equal(np.asarray(load_region(back[0])[0]), np.asarray(load_image(outside)))
    write_dataset(tmp_path / "ds", back)  # rewriting keeps the links as they are
    assert [json.loads(x) for x in (tmp_path / "ds" / "metadata.jsonl").read_text().splitlines()] == lines


# ----------------------------------------------------------------------------------- 5. other input edges
def test_metadata_that_is_a_folder_or_unreadable(tmp_path, monkeypatch):
    ds = tmp_path / "ds"
    (ds / "metadata.jsonl").mkdir(parents=True)
    with pytest.raises(DatasetError, match="metadata.jsonl: is a folder, not a file"):
        load_dataset(ds)
    assert "is a folder" in validate_dataset(ds)[1][0].message
    photo = _image(tmp_path / "photo.png")
    with pytest.raises(DatasetError, match="photo.png is a file, not a dataset folder"):
        load_dataset(photo)
    locked = _dataset(tmp_path / "locked", [{"file_name": "a.png"}])

    def denied(path, *args, **kwargs):  # what open() raises on a file without read permission (root reads anything)
        raise PermissionError(errno.EACCES, "Permission denied", str(path))

    monkeypatch.setattr(dataset_module, "open", denied, raising=False)
    with pytest.raises(DatasetError) as e:
        load_dataset(locked)
    assert _one_line(e.value) == f"{locked / 'metadata.jsonl'}: cannot read it (Permission denied); check that it is " \
                                 "a readable file"


def test_non_utf8_bytes_name_the_line(tmp_path):
    _image(tmp_path / "ds" / "a.png")
    raw = b'{"file_name": "a.png", "id": "1"}\n{"file_name": "a.png", "id": "2"}\n{"file_name": "a.png", "label": "h\xe9"}\n[1]\n'
    ds = _dataset(tmp_path / "ds", [], raw=raw)
    with pytest.raises(DatasetError) as e:
        load_dataset(ds)
    assert f"{ds / 'metadata.jsonl'}:3: not UTF-8 text (byte 0xe9 at column 35); save the file as UTF-8" == str(e.value)
    n, problems = validate_dataset(ds)  # every problem, each on its line
    assert n == 4 and sorted(p.where.rsplit(":", 1)[1] for p in problems) == ["3", "4"]
    assert "got a JSON array" in next(p.message for p in problems if p.where.endswith(":4"))
    utf16 = _dataset(tmp_path / "u16", [], raw='{"file_name": "a.png"}\n'.encode("utf-16"))
    with pytest.raises(DatasetError, match=r"metadata.jsonl:1: not UTF-8 text \(the file is UTF-16"):
        load_dataset(utf16)


@pytest.mark.parametrize("line, message", [
    ([{"file_name": "a.png"}], "expected a JSON object per line such as {\"file_name\""),
    ("\"a.png\"", "got a JSON string"),
    ({"file_name": "a.png", "mask_threshold": "high"}, "'mask_threshold' must be a number"),
    ({"file_name": ""}, "missing 'file_name'"),
])
def test_bad_lines_are_one_line_errors(tmp_path, line, message):
    ds = _dataset(tmp_path / "ds", [{"file_name": "a.png", "id": "first"}, line])
    with pytest.raises(DatasetError) as e:
        load_dataset(ds)
    assert _one_line(e.value).startswith(f"{ds / 'metadata.jsonl'}:2: ") and message in str(e.value)
    problems = validate_dataset(ds, check_files=False)[1]
    assert [p.where for p in problems] == [f"{ds / 'metadata.jsonl'}:2"] and message in problems[0].message


def test_duplicate_ids_name_both_lines(tmp_path):
    ds = _dataset(tmp_path / "ds", [{"file_name": "a.png"}, {"file_name": "b.png", "id": "x"}, {"file_name": "a.png"}])
    with pytest.raises(DatasetError, match=r"metadata.jsonl:3: duplicate id 'a.png' \(first on line 1\)"):
        load_dataset(ds)
    assert [p.where[-2:] for p in validate_dataset(ds, check_files=False)[1]] == [":3"]
