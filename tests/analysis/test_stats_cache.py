"""The data-statistics cache: used when valid, recomputed when stale, foreign, corrupt or tampered with."""

import os
import pickle
import shutil

import numpy as np
import pytest
import torch

from fastgauss import reference as ref
from fastgauss.analysis.stats_cache import FORMAT, cached_stats
from helpers import rel_err


def _data(seed=0, n=37, shape=(1, 3, 5)):
    g = torch.Generator().manual_seed(seed)
    return torch.rand((n, *shape), generator=g) * 2 - 1 + 0.3


def _check_against_reference(stats, data, ddof=0):
    x = data.reshape(data.shape[0], -1)
    cov = ref.covariance(x, ddof=ddof)
    assert rel_err(stats.mean, ref.mean(x)) < 1e-12
    assert rel_err(stats.record["covariance"], cov) < 1e-6
    vecs, vals = stats.eigvecs, stats.eigvals
    assert rel_err(vecs @ torch.diag(vals) @ vecs.T, cov) < 1e-6
    assert stats.moments.count == data.shape[0]


def test_miss_then_hit_returns_the_same_record(tmp_path):
    data = _data()
    first = cached_stats(data, cache_dir=tmp_path, progress=False)
    assert first.status == "miss" and first.path.is_file() and first.path.parent == tmp_path
    _check_against_reference(first, data)
    second = cached_stats(data.clone(), cache_dir=tmp_path, progress=False)
    assert second.status == "hit" and second.path == first.path
    assert torch.equal(second.eigvecs, first.eigvecs) and torch.equal(second.mean, first.mean)
    assert second.record["cache"]["format"] == FORMAT
    assert set(second.record) >= {"source", "count", "feature_shape", "ddof", "mean", "covariance", "eigvals",
                                  "eigvecs", "moments"}  # the `fastgauss stats` record


def test_other_data_ddof_or_precision_is_a_different_entry(tmp_path):
    data = _data()
    base = cached_stats(data, cache_dir=tmp_path, progress=False)
    changed = data.clone()
    changed[5, 0, 1, 2] += 1e-3  # one value: another hash of the bytes
    other = cached_stats(changed, cache_dir=tmp_path, progress=False)
    assert other.status == "miss" and other.path != base.path
    _check_against_reference(other, changed)
    ddof1 = cached_stats(data, cache_dir=tmp_path, ddof=1, progress=False)
    assert ddof1.status == "miss" and ddof1.path != base.path
    _check_against_reference(ddof1, data, ddof=1)
    tf32 = cached_stats(data, cache_dir=tmp_path, precision="tf32", progress=False)
    assert tf32.status == "miss" and tf32.path not in (base.path, ddof1.path)
    assert cached_stats(data, cache_dir=tmp_path, progress=False).status == "hit"


def test_foreign_cache_under_the_expected_name_is_recomputed(tmp_path):
    data, foreign = _data(0), _data(1)
    mine = cached_stats(data, cache_dir=tmp_path / "a", progress=False)
    theirs = cached_stats(foreign, cache_dir=tmp_path / "b", progress=False)
    shutil.copy(theirs.path, mine.path)  # someone else's statistics where ours should be
    again = cached_stats(data, cache_dir=tmp_path / "a", progress=False)
    assert again.status.startswith("recomputed") and "key" in again.status
    _check_against_reference(again, data)
    assert cached_stats(data, cache_dir=tmp_path / "a", progress=False).status == "hit"  # rewritten


@pytest.mark.parametrize("damage", ["truncated", "mean", "nan", "version", "count"])
def test_damaged_or_tampered_cache_is_recomputed(tmp_path, damage):
    data = _data()
    path = cached_stats(data, cache_dir=tmp_path, progress=False).path
    if damage == "truncated":
        path.write_bytes(path.read_bytes()[:200])
    else:
        state = torch.load(path, weights_only=True)
        if damage == "mean":  # the right key, the wrong numbers: the mean check catches it
            state["mean"] = state["mean"] + 1e-6
        elif damage == "nan":
            state["eigvecs"][0, 0] = float("nan")
        elif damage == "version":
            state["cache"]["version"] = 0
        else:
            state["count"] = data.shape[0] + 1
        torch.save(state, path)
    again = cached_stats(data, cache_dir=tmp_path, progress=False)
    assert again.status.startswith("recomputed"), again.status
    _check_against_reference(again, data)


class _Payload:
    def __reduce__(self):
        return (os.mkdir, (str(_Payload.target),))


def test_a_code_carrying_pickle_is_never_executed(tmp_path):
    data = _data()
    path = cached_stats(data, cache_dir=tmp_path, progress=False).path
    _Payload.target = tmp_path / "pwned"
    with open(path, "wb") as f:
        pickle.dump({"cache": _Payload()}, f)
    again = cached_stats(data, cache_dir=tmp_path, progress=False)
    assert again.status.startswith("recomputed: unreadable")
    assert not (tmp_path / "pwned").exists()
    _check_against_reference(again, data)


def test_file_source_is_keyed_by_path_size_and_mtime(tmp_path):
    arr = np.random.default_rng(0).uniform(-1, 1, (40, 6)).astype(np.float32)
    file = tmp_path / "vectors.npy"
    np.save(file, arr)
    data = torch.from_numpy(arr)
    cache = tmp_path / "cache"
    assert cached_stats(data, cache_dir=cache, source=file, progress=False).status == "miss"
    assert cached_stats(data, cache_dir=cache, source=file, progress=False).status == "hit"
    arr2 = arr.copy()
    arr2[3, 2] = 0.5
    np.save(file, arr2)  # same size, new content and mtime
    st = file.stat()
    os.utime(file, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    fresh = cached_stats(torch.from_numpy(arr2), cache_dir=cache, source=file, progress=False)
    assert fresh.status == "miss"
    _check_against_reference(fresh, torch.from_numpy(arr2))
    # the same file read another way (another scale): same path, size and mtime, other data
    scaled = torch.from_numpy(arr2) * 0.5
    other = cached_stats(scaled, cache_dir=cache, source=file, progress=False)
    assert other.status == "miss" and other.path != fresh.path
    _check_against_reference(other, scaled)


def test_folder_source_sees_a_changed_file(tmp_path):
    folder = tmp_path / "imgs"
    folder.mkdir()
    for i in range(3):
        (folder / f"{i}.bin").write_bytes(bytes([i]) * 10)
    data = _data()
    cache = tmp_path / "cache"
    first = cached_stats(data, cache_dir=cache, source=folder, progress=False)
    assert cached_stats(data, cache_dir=cache, source=folder, progress=False).status == "hit"
    (folder / "1.bin").write_bytes(b"x" * 11)  # a file inside changes; the folder's own mtime may not
    second = cached_stats(data, cache_dir=cache, source=folder, progress=False)
    assert second.status == "miss" and second.path != first.path


def test_no_cache_dir_computes_without_writing(tmp_path):
    data = _data()
    stats = cached_stats(data, progress=False)
    assert stats.status == "uncached" and stats.path is None
    _check_against_reference(stats, data)


@pytest.mark.parametrize("kwargs, match", [({"ddof": 2}, "ddof"), ({"precision": "fp8"}, "precision"),
                                           ({"batch_size": 0}, "batch_size")])
def test_bad_arguments_name_themselves(tmp_path, kwargs, match):
    with pytest.raises(ValueError, match=match):
        cached_stats(_data(), cache_dir=tmp_path, progress=False, **kwargs)
    with pytest.raises(ValueError, match="data"):
        cached_stats(torch.zeros(0, 3), cache_dir=tmp_path, progress=False)
