"""Tests for fastgauss.data (CPU only, a few seconds)."""

from __future__ import annotations

import json
import re
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from fastgauss.data import BUNDLED, dataset_names, load_dataset

EXPECTED_SHAPES = {
    "digits": (1797, 1, 8, 8),
    "faces": (200, 1, 25, 25),
}


def _scaled(arr: np.ndarray) -> torch.Tensor:
    """Reference scaling of uint8 data: arr / 127.5 - 1 as float32."""
    return torch.from_numpy((arr / 127.5 - 1).astype(np.float32))


def _rand_u8(seed: int, shape: tuple[int, ...]) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=shape, dtype=np.uint8)


# ------------------------------------------------------------------------- bundled


def test_bundled_names_and_descriptions():
    assert dataset_names() == ["digits", "faces", "patches"]
    assert list(BUNDLED) == dataset_names()
    assert all(isinstance(v, str) and v and "\n" not in v for v in BUNDLED.values())


@pytest.fixture(scope="module", params=["digits", "faces", "patches"])
def bundled(request):
    return request.param, load_dataset(request.param)


def test_bundled_shape_dtype_range(bundled):
    name, x = bundled
    assert x.dtype == torch.float32
    assert x.ndim == 4 and x.shape[1] == 1
    if name in EXPECTED_SHAPES:
        assert tuple(x.shape) == EXPECTED_SHAPES[name]
    else:  # patches
        assert x.shape[2:] == (16, 16)
        assert 1000 <= x.shape[0] <= 20000
    assert x.min() >= -1 and x.max() <= 1
    assert x.min() < -0.5 and x.max() > 0.5
    assert torch.isfinite(x).all()


def test_bundled_deterministic(bundled):
    name, x = bundled
    assert torch.equal(load_dataset(name), x)


def test_bundled_limit_is_prefix(bundled):
    name, x = bundled
    y = load_dataset(name, limit=7)
    assert tuple(y.shape) == (7, *x.shape[1:])
    assert torch.equal(y, x[:7])
    assert torch.equal(load_dataset(name, limit=len(x)), x)


def test_digits_values_match_sklearn():
    from sklearn.datasets import load_digits

    ref = torch.from_numpy((load_digits().images / 8 - 1).astype(np.float32))
    assert torch.equal(load_dataset("digits")[:, 0], ref)


def test_limit_errors():
    with pytest.raises(ValueError, match=r"limit=1798.*1797"):
        load_dataset("digits", limit=1798)
    with pytest.raises(ValueError, match=r"limit must be >= 1"):
        load_dataset("digits", limit=0)
    with pytest.raises(ValueError, match=r"limit must be >= 1"):
        load_dataset("faces", limit=-3)


def test_unknown_name_lists_bundled():
    msg = (
        "unknown dataset 'no-such-dataset': not a file or folder, and not one of the "
        "bundled datasets: digits, faces, patches"
    )
    with pytest.raises(ValueError, match=re.escape(msg)):
        load_dataset("no-such-dataset")


# ---------------------------------------------------------------- folders and zips


@pytest.fixture
def gray_images() -> dict[str, np.ndarray]:
    """Relative path -> uint8 [H, W]; keys are in the expected (sorted) order."""
    return {
        "a.png": _rand_u8(0, (6, 5)),
        "b.PNG": _rand_u8(1, (6, 5)),
        "sub/c.Png": _rand_u8(2, (6, 5)),
        "sub/deeper/d.png": _rand_u8(3, (6, 5)),
    }


def _write_folder(root: Path, images: dict[str, np.ndarray]) -> Path:
    for rel, arr in images.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(arr).save(path, format="PNG")
    return root


def test_folder_roundtrip_gray(tmp_path, gray_images):
    root = _write_folder(tmp_path / "imgs", gray_images)
    (root / "notes.txt").write_text("not an image")
    x = load_dataset(root)
    assert x.dtype == torch.float32 and tuple(x.shape) == (4, 1, 6, 5)
    expected = _scaled(np.stack(list(gray_images.values()))[:, None])
    assert torch.equal(x, expected)
    restored = ((x + 1) * 127.5).round().to(torch.uint8).numpy()[:, 0]
    assert np.array_equal(restored, np.stack(list(gray_images.values())))
    # str paths work too, and limit keeps the first items in sorted order
    assert torch.equal(load_dataset(str(root), limit=2), expected[:2])
    with pytest.raises(ValueError, match=r"limit=5.*\b4\b"):
        load_dataset(root, limit=5)


def test_zip_edm_layout_roundtrip(tmp_path, gray_images):
    arrays = list(gray_images.values())
    zpath = tmp_path / "dataset.zip"
    with zipfile.ZipFile(zpath, "w") as zf:
        zf.writestr("00000/", "")
        for i, arr in reversed(list(enumerate(arrays))):  # write out of order
            folder = f"{i // 2:05d}"
            png = tmp_path / f"tmp{i}.png"
            Image.fromarray(arr).save(png)
            zf.write(png, f"{folder}/img{i:08d}.png")
        zf.writestr("dataset.json", json.dumps({"labels": [[f"img{i:08d}.png", 0] for i in range(4)]}))
    x = load_dataset(zpath)
    assert tuple(x.shape) == (4, 1, 6, 5)
    assert torch.equal(x, _scaled(np.stack(arrays)[:, None]))
    assert torch.equal(load_dataset(zpath, limit=3), x[:3])


def test_folder_rgb_and_alpha_and_palette(tmp_path):
    rgb = _rand_u8(10, (4, 7, 3))
    rgba = _rand_u8(11, (4, 7, 4))
    Image.fromarray(rgb).save(tmp_path / "0_rgb.png")
    Image.fromarray(rgba, mode="RGBA").save(tmp_path / "1_rgba.png")
    pal = Image.fromarray(_rand_u8(12, (4, 7, 3))).convert("P")
    pal.save(tmp_path / "2_pal.bmp")
    x = load_dataset(tmp_path)
    assert tuple(x.shape) == (3, 3, 4, 7)
    assert torch.equal(x[0], _scaled(rgb.transpose(2, 0, 1)))
    assert torch.equal(x[1], _scaled(rgba[..., :3].transpose(2, 0, 1)))
    assert torch.equal(x[2], _scaled(np.asarray(pal.convert("RGB")).transpose(2, 0, 1)))


def test_folder_mixed_gray_and_rgb_becomes_rgb(tmp_path):
    gray = _rand_u8(20, (5, 5))
    rgb = _rand_u8(21, (5, 5, 3))
    Image.fromarray(gray).save(tmp_path / "a.png")
    Image.fromarray(rgb).save(tmp_path / "b.png")
    x = load_dataset(tmp_path)
    assert tuple(x.shape) == (2, 3, 5, 5)
    assert torch.equal(x[0], _scaled(np.repeat(gray[None], 3, axis=0)))
    assert torch.equal(x[1], _scaled(rgb.transpose(2, 0, 1)))
    # only the first (grayscale) image kept -> stays one channel
    assert tuple(load_dataset(tmp_path, limit=1).shape) == (1, 1, 5, 5)


def test_folder_size_mismatch_names_file(tmp_path):
    Image.fromarray(_rand_u8(30, (8, 8))).save(tmp_path / "a.png")
    Image.fromarray(_rand_u8(31, (8, 8))).save(tmp_path / "b.png")
    Image.fromarray(_rand_u8(32, (6, 9))).save(tmp_path / "c.png")
    with pytest.raises(ValueError, match=r"c\.png.*9x6.*a\.png.*8x8"):
        load_dataset(tmp_path)


def test_empty_folder_and_zip_error(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "readme.txt").write_text("no images here")
    with pytest.raises(ValueError, match=re.escape(str(empty))):
        load_dataset(empty)
    zpath = tmp_path / "empty.zip"
    with zipfile.ZipFile(zpath, "w") as zf:
        zf.writestr("dataset.json", "{}")
    with pytest.raises(ValueError, match=r"no image files.*" + re.escape(str(zpath))):
        load_dataset(zpath)


def test_broken_image_names_file(tmp_path):
    Image.fromarray(_rand_u8(40, (4, 4))).save(tmp_path / "good.png")
    (tmp_path / "broken.jpg").write_bytes(b"this is not a jpeg")
    with pytest.raises(ValueError, match=r"broken\.jpg"):
        load_dataset(tmp_path)


def test_unsupported_paths(tmp_path):
    txt = tmp_path / "data.txt"
    txt.write_text("hello")
    with pytest.raises(ValueError, match=re.escape(str(txt))):
        load_dataset(txt)
    bad_zip = tmp_path / "bad.zip"
    bad_zip.write_bytes(b"not a zip archive")
    with pytest.raises(ValueError, match=re.escape(str(bad_zip))):
        load_dataset(bad_zip)
    bad_npy = tmp_path / "bad.npy"
    bad_npy.write_bytes(b"not an npy file")
    with pytest.raises(ValueError, match=re.escape(str(bad_npy))):
        load_dataset(bad_npy)


# ------------------------------------------------------------------- .npy and .npz


def test_npy_nhw_uint8(tmp_path):
    arr = _rand_u8(50, (5, 6, 7))
    np.save(tmp_path / "a.npy", arr)
    x = load_dataset(tmp_path / "a.npy")
    assert x.dtype == torch.float32 and tuple(x.shape) == (5, 1, 6, 7)
    assert torch.equal(x, _scaled(arr[:, None]))
    assert torch.equal(load_dataset(tmp_path / "a.npy", limit=2), x[:2])
    with pytest.raises(ValueError, match=r"limit=6.*\b5\b"):
        load_dataset(tmp_path / "a.npy", limit=6)


def test_npy_channel_last_uint8(tmp_path):
    arr = _rand_u8(51, (4, 8, 6, 3))
    np.save(tmp_path / "a.npy", arr)
    x = load_dataset(tmp_path / "a.npy")
    assert tuple(x.shape) == (4, 3, 8, 6)
    assert torch.equal(x, _scaled(arr.transpose(0, 3, 1, 2)))


def test_npy_channel_first_float_unchanged(tmp_path):
    arr = np.random.default_rng(52).uniform(-1, 1, size=(4, 3, 8, 6))
    np.save(tmp_path / "a.npy", arr)
    x = load_dataset(tmp_path / "a.npy")
    assert x.dtype == torch.float32 and tuple(x.shape) == (4, 3, 8, 6)
    assert torch.equal(x, torch.from_numpy(arr.astype(np.float32)))


def test_npy_flat_vectors(tmp_path):
    arr = np.random.default_rng(53).normal(size=(10, 2)).astype(np.float32)
    np.save(tmp_path / "v.npy", arr)
    x = load_dataset(tmp_path / "v.npy")
    assert x.dtype == torch.float32 and tuple(x.shape) == (10, 2)
    assert torch.equal(x, torch.from_numpy(arr))


def test_npy_bool(tmp_path):
    arr = np.random.default_rng(54).random((3, 4, 4)) > 0.5
    np.save(tmp_path / "b.npy", arr)
    x = load_dataset(tmp_path / "b.npy")
    assert torch.equal(x, torch.from_numpy(np.where(arr, 1.0, -1.0).astype(np.float32))[:, None])


def test_npy_bad_dtype_and_layout(tmp_path):
    np.save(tmp_path / "i.npy", np.zeros((3, 4, 4), dtype=np.int32))
    with pytest.raises(ValueError, match=r"int32"):
        load_dataset(tmp_path / "i.npy")
    np.save(tmp_path / "c.npy", np.zeros((3, 5, 4, 7), dtype=np.uint8))
    with pytest.raises(ValueError, match=r"\(3, 5, 4, 7\)"):
        load_dataset(tmp_path / "c.npy")
    np.save(tmp_path / "one.npy", np.zeros((3,), dtype=np.uint8))
    with pytest.raises(ValueError, match=r"shape"):
        load_dataset(tmp_path / "one.npy")


def test_npy_non_finite(tmp_path):
    arr = np.zeros((4, 3, 3), dtype=np.float64)
    arr[0, 0, 0] = np.nan
    arr[2, 1, 1] = np.inf
    np.save(tmp_path / "nf.npy", arr)
    with pytest.raises(ValueError, match=r"\b2 non-finite"):
        load_dataset(tmp_path / "nf.npy")


def test_npz_key_selection(tmp_path):
    imgs = _rand_u8(60, (3, 4, 4))
    np.savez(tmp_path / "named.npz", labels=np.arange(3), images=imgs)
    assert torch.equal(load_dataset(tmp_path / "named.npz"), _scaled(imgs[:, None]))
    np.savez(tmp_path / "single.npz", whatever=imgs)
    assert torch.equal(load_dataset(tmp_path / "single.npz"), _scaled(imgs[:, None]))
    np.savez(tmp_path / "prefer_x.npz", data=np.zeros((2, 4, 4), np.uint8), x=imgs)
    assert torch.equal(load_dataset(tmp_path / "prefer_x.npz"), _scaled(imgs[:, None]))


def test_npz_ambiguous_lists_names(tmp_path):
    np.savez(tmp_path / "amb.npz", foo=np.zeros((2, 3, 3)), bar=np.ones((2, 3, 3)))
    with pytest.raises(ValueError, match=r"(?=.*foo)(?=.*bar)"):
        load_dataset(tmp_path / "amb.npz")


# ------------------------------------------------- float range check and scale= (issue 12)


@pytest.mark.parametrize("low, high, hint", [(0, 255, "scale='0-255'"), (0, 1.5, "scale='0-255'"),
                                             (-3, 0.5, "no scale= fits")])
def test_float_images_outside_minus_one_one_are_rejected(tmp_path, low, high, hint):
    arr = np.random.default_rng(60).uniform(low, high, size=(6, 5, 5)).astype(np.float32)
    np.save(tmp_path / "f.npy", arr)
    with pytest.raises(ValueError, match=r"outside \[-1, 1\]") as info:
        load_dataset(tmp_path / "f.npy")
    assert f"{arr.min():.4g}" in str(info.value) and f"{arr.max():.4g}" in str(info.value)
    assert hint in str(info.value)


def test_float_images_in_zero_one_pass_unchanged_and_rounding_is_tolerated(tmp_path):
    arr = np.random.default_rng(61).uniform(-1, 1, size=(6, 5, 5)).astype(np.float32)
    arr[0, 0, 0], arr[0, 0, 1] = 1.0005, -1.0005  # a conversion's rounding elsewhere
    np.save(tmp_path / "f.npy", arr)
    assert torch.equal(load_dataset(tmp_path / "f.npy"), torch.from_numpy(arr)[:, None])
    arr[0, 0, 0] = 1.01
    np.save(tmp_path / "f.npy", arr)
    with pytest.raises(ValueError, match="outside"):
        load_dataset(tmp_path / "f.npy")


@pytest.mark.parametrize("scale, high", [("0-255", 255.0), ("0-1", 1.0)])
def test_scale_maps_float_arrays(tmp_path, scale, high):
    arr = np.random.default_rng(62).uniform(0, high, size=(6, 5, 5)).astype(np.float32)
    np.save(tmp_path / "f.npy", arr)
    x = load_dataset(tmp_path / "f.npy", scale=scale)
    ref = torch.from_numpy((arr.astype(np.float64) / (high / 2) - 1).astype(np.float32))[:, None]
    assert torch.equal(x, ref)
    assert float(x.min()) >= -1 and float(x.max()) <= 1


def test_scale_errors(tmp_path):
    arr = np.random.default_rng(63).uniform(0, 255, size=(6, 5, 5)).astype(np.float32)
    np.save(tmp_path / "f.npy", arr)
    with pytest.raises(ValueError, match=r"outside \[0, 1\].*scale='0-255'"):
        load_dataset(tmp_path / "f.npy", scale="0-1")
    with pytest.raises(ValueError, match="scale: expected None or one of"):
        load_dataset(tmp_path / "f.npy", scale="0-65535")
    with pytest.raises(ValueError, match="scale: '0-1' applies to float"):
        load_dataset("digits", scale="0-1")
    np.save(tmp_path / "u.npy", arr.astype(np.uint8))
    with pytest.raises(ValueError, match="scale: '0-1' does not fit the uint8"):
        load_dataset(tmp_path / "u.npy", scale="0-1")
    assert torch.equal(load_dataset(tmp_path / "u.npy", scale="0-255"), load_dataset(tmp_path / "u.npy"))


def test_flat_vectors_are_not_range_checked_but_scale_applies(tmp_path):
    arr = np.random.default_rng(64).normal(scale=5, size=(10, 3)).astype(np.float32)
    np.save(tmp_path / "v.npy", arr)
    assert torch.equal(load_dataset(tmp_path / "v.npy"), torch.from_numpy(arr))
    with pytest.raises(ValueError, match="outside"):
        load_dataset(tmp_path / "v.npy", scale="0-1")
