"""Compact storage's codec (backend/codec.py): q8-delta round trips within its bound,
files are deterministic, and the derivations match the precompute's torch code."""

import io
import zipfile

import numpy as np
import pytest

from backend import codec


def maps(seed=0, shape=(6, 4, 8, 8)):
    """Smooth along the steps, like a denoising trajectory, with a wide range of scales."""
    rng = np.random.default_rng(seed)
    walk = np.cumsum(rng.standard_normal(shape), axis=0) * 0.1
    return (walk * rng.uniform(0.01, 100, shape[:2] + (1, 1))).astype(np.float32)


@pytest.mark.parametrize("name, shape", [("latents", (7, 4, 8, 8)),
                                         ("attention_res4", (5, 9, 4, 4)),
                                         ("noise_pred", (3, 4, 5, 7))])
def test_decoded_values_are_within_half_a_quantization_step(name, shape):
    x = maps(1, shape)
    axis = codec.step_axis(name)
    data, values = codec.encode(x, axis)
    members = np.load(io.BytesIO(data), allow_pickle=False)
    q, lo, scale = members["q"], members["lo"], members["scale"]
    assert (q.dtype, lo.dtype, scale.dtype) == (np.uint8, np.float32, np.float32)
    assert q.shape == x.shape and lo.shape == scale.shape == tuple(codec.spatially_reduced(shape))
    decoded = codec.decode({k: members[k] for k in codec.MEMBERS}, axis)
    np.testing.assert_array_equal(decoded, values)
    assert (np.abs(decoded - x) <= scale / 2 * (1 + 1e-5) + 1e-30).all()
    served = decoded.astype(np.float16).astype(np.float32)  # + float16's own rounding
    half_ulp = np.abs(served) * 2.0 ** -11
    assert (np.abs(served - x) <= scale / 2 * (1 + 1e-5) + half_ulp).all()


def test_delta_coding_wraps_and_is_lossless():
    q = np.random.default_rng(2).integers(0, 256, (9, 3, 4, 4)).astype(np.uint8)
    for axis in (0, 1):
        d = codec.delta(q, axis)
        assert d.dtype == np.uint8
        np.testing.assert_array_equal(codec.undelta(d, axis), q)


def test_constant_maps_decode_exactly():
    x = np.full((4, 2, 3, 3), 0.375, np.float32)
    x[1, 1] = -2.0
    data, values = codec.encode(x, 0)
    assert (np.load(io.BytesIO(data))["scale"] == 0).all()
    np.testing.assert_array_equal(values, x)


def test_trajectories_deflate_far_below_float16():
    x = maps(3, (50, 4, 16, 16))
    data, _ = codec.encode(x, 0)
    assert len(data) < x.astype(np.float16).nbytes / 2  # a real demo run: about / 5


def test_npz_is_deterministic_and_readable_by_numpy():
    x = maps(4)
    first, _ = codec.encode(x, 0)
    second, _ = codec.encode(x.copy(), 0)
    assert first == second
    with zipfile.ZipFile(io.BytesIO(first)) as zf:
        assert [i.filename for i in zf.infolist()] == ["q.npy", "lo.npy", "scale.npy"]
        assert {i.date_time for i in zf.infolist()} == {(1980, 1, 1, 0, 0, 0)}
        assert {i.compress_type for i in zf.infolist()} == {zipfile.ZIP_LZMA}
    assert set(np.load(io.BytesIO(first)).files) == {"q", "lo", "scale"}


def test_deflated_files_from_earlier_writers_decode_the_same_and_lzma_is_smaller(tmp_path):
    x = maps(6, (50, 4, 16, 16))
    lzma_bytes, values = codec.encode(x, 0)
    members = codec.read_npz(io.BytesIO(lzma_bytes))
    deflated = codec.npz_bytes(members, compression=zipfile.ZIP_DEFLATED)
    with zipfile.ZipFile(io.BytesIO(deflated)) as zf:
        assert {i.compress_type for i in zf.infolist()} == {zipfile.ZIP_DEFLATED}
    (tmp_path / "old.q8.npz").write_bytes(deflated)
    np.testing.assert_array_equal(codec.load(tmp_path / "old.q8.npz", 0), values)
    assert len(lzma_bytes) < len(deflated)
    with pytest.raises(ValueError, match="ZIP_LZMA or ZIP_DEFLATED"):
        codec.npz_bytes(members, compression=zipfile.ZIP_BZIP2)


def test_header_only_read_does_not_inflate_q(tmp_path):
    data, _ = codec.encode(maps(5), 0)
    (tmp_path / "a.q8.npz").write_bytes(data)
    members = codec.read_npz(tmp_path / "a.q8.npz", header_only=("q",))
    assert members["q"] == (np.dtype(np.uint8), (6, 4, 8, 8))
    assert members["lo"].shape == (6, 4, 1, 1)


def test_guidance_is_the_precompute_formula_and_one_branch_is_itself():
    rng = np.random.default_rng(6)
    u, t = rng.standard_normal((2, 3, 4, 2, 2)).astype(np.float32)
    np.testing.assert_array_equal(codec.guidance([u, t], 7.5), u + np.float32(7.5) * (t - u))
    np.testing.assert_array_equal(codec.guidance([t], 1.0), t)


@pytest.mark.parametrize("size_in, size_out", [((8, 8), (16, 16)), ((4, 4), (16, 16)),
                                               ((2, 2), (64, 64)), ((3, 5), (13, 17)),
                                               ((16, 16), (16, 16))])
def test_bilinear_upsampling_matches_torch(size_in, size_out):
    torch = pytest.importorskip("torch")
    import torch.nn.functional as F
    x = np.random.default_rng(7).random((3, 4, *size_in)).astype(np.float32)
    expected = F.interpolate(torch.from_numpy(x), size=size_out, mode="bilinear",
                             align_corners=False).numpy()
    np.testing.assert_allclose(codec.upsample_bilinear(x, size_out), expected, rtol=0, atol=1e-6)


def test_attention_mean_matches_the_capture_s_combined_map():
    """precompute/attention.py pop_step: levels upsampled to the latent size, then averaged."""
    torch = pytest.importorskip("torch")
    import torch.nn.functional as F
    rng = np.random.default_rng(8)
    levels = [rng.random((5, 3, r, r)).astype(np.float32) for r in (16, 8, 4)]
    expected = torch.stack([
        torch.from_numpy(a) if a.shape[-1] == 16 else
        F.interpolate(torch.from_numpy(a), size=(16, 16), mode="bilinear", align_corners=False)
        for a in levels]).mean(dim=0).numpy()
    np.testing.assert_allclose(codec.attention_mean(levels, (16, 16)), expected, rtol=0,
                               atol=1e-6)
