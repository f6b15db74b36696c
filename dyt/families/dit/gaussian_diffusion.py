"""Gaussian diffusion as DiT trains and samples it (the ADM / improved-diffusion configuration DiT uses).

Linear betas, epsilon prediction, learned-range sigma, the hybrid loss (MSE on eps + the VLB with the mean
detached), timestep respacing, DDPM and DDIM sampling. Nothing else: no x0/x_{t-1} prediction, no other losses.
Written from the equations (Ho et al. 2020; Nichol & Dhariwal 2021; Song et al. 2021) to reproduce
facebookresearch/DiT `diffusion/` numerically. Timesteps are given to the model unscaled (DiT: rescale_timesteps=False).
"""
from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from numbers import Integral

import numpy as np
import torch
from torch import Tensor

#: model_fn(x_t, t) -> (B, 2C, ...) [eps, v] with learn_sigma, else (B, C, ...) eps; t are ORIGINAL-process indices
ModelFn = Callable[[Tensor, Tensor], Tensor]


def mean_flat(x: Tensor) -> Tensor:
    """Mean over every dimension but the batch one."""
    return x.mean(dim=tuple(range(1, x.ndim))) if x.ndim > 1 else x


def linear_betas(num_steps: int = 1000) -> np.ndarray:
    """Ho et al.'s 1e-4 -> 0.02 schedule, scaled by 1000/num_steps so any step count adds about the same noise."""
    scale = 1000 / num_steps
    return np.linspace(scale * 1e-4, scale * 0.02, num_steps, dtype=np.float64)


def _count(text: str, spacing: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise ValueError(f"space_timesteps: cannot read {spacing!r}: expected 'N', 'N,N,...' or 'ddimN'") from None


def space_timesteps(num_steps: int, spacing: int | str | Sequence[int]) -> list[int]:
    """The steps of a `num_steps` process to keep, sorted (ADM's `space_timesteps`).

    `spacing` is a count (250 or "250"), comma-separated counts per equal section ("10,10,10" or [10, 10, 10]:
    the process is cut into that many equal parts, each strided to its count, both ends kept), or "ddimN":
    the fixed integer stride of the DDIM paper giving exactly N steps, 0, s, 2s, ...
    """
    if num_steps < 1:
        raise ValueError(f"space_timesteps: num_steps must be >= 1, got {num_steps}")
    if isinstance(spacing, str):
        spacing = spacing.strip()
        if spacing.startswith("ddim"):
            want = _count(spacing[4:], spacing)
            for stride in range(1, num_steps + 1):
                if len(range(0, num_steps, stride)) == want:
                    return list(range(0, num_steps, stride))
            raise ValueError(f"space_timesteps: no integer stride takes exactly {want} of {num_steps} steps "
                             f"({spacing!r}); choose another count, or {want} without 'ddim' for fractional strides")
        counts = [_count(s, spacing) for s in spacing.split(",")]
    elif isinstance(spacing, Integral):
        counts = [int(spacing)]
    else:
        counts = [int(c) for c in spacing]
    if not counts or min(counts) < 0 or sum(counts) == 0:
        raise ValueError(f"space_timesteps: need non-negative section counts with a positive total, got {counts}")
    size, extra = divmod(num_steps, len(counts))
    steps, start = [], 0
    for i, count in enumerate(counts):
        n = size + (i < extra)  # the first `extra` sections are one step longer
        if count > n:
            raise ValueError(f"space_timesteps: cannot take {count} steps from a section of {n} "
                             f"({num_steps} steps in {len(counts)} sections)")
        stride = (n - 1) / (count - 1) if count > 1 else 1
        pos = 0.0
        for _ in range(count):
            # accumulate the float position, as ADM does, so rounding ties land on the same steps
            steps.append(start + round(pos))
            pos += stride
        start += n
    return steps


def normal_kl(mean1: Tensor, logvar1: Tensor, mean2: Tensor, logvar2: Tensor) -> Tensor:
    """KL(N(mean1, e^logvar1) || N(mean2, e^logvar2)) elementwise, in nats."""
    return 0.5 * (logvar2 - logvar1 - 1.0 + torch.exp(logvar1 - logvar2) + (mean1 - mean2) ** 2 * torch.exp(-logvar2))


def _approx_normal_cdf(x: Tensor) -> Tensor:
    # ADM's tanh approximation of Phi, kept instead of erf so bits/dim are comparable with the published numbers
    return 0.5 * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x ** 3)))


def discretized_gaussian_log_likelihood(x: Tensor, mean: Tensor, log_scale: Tensor) -> Tensor:
    """log P(x) in nats, elementwise, for x = uint8 images scaled to [-1, 1] (256 bins of width 2/255) under
    N(mean, exp(log_scale)^2); the two edge bins extend to -inf / +inf so the probabilities sum to one."""
    inv_std = torch.exp(-log_scale)
    cdf_hi = _approx_normal_cdf(inv_std * (x - mean + 1.0 / 255))
    cdf_lo = _approx_normal_cdf(inv_std * (x - mean - 1.0 / 255))
    log_cdf_hi = torch.log(cdf_hi.clamp(min=1e-12))
    log_sf_lo = torch.log((1.0 - cdf_lo).clamp(min=1e-12))
    log_bin = torch.log((cdf_hi - cdf_lo).clamp(min=1e-12))
    return torch.where(x < -0.999, log_cdf_hi, torch.where(x > 0.999, log_sf_lo, log_bin))


class GaussianDiffusion:
    """A (possibly respaced) diffusion process of `num_steps` steps with the given betas.

    `timestep_map[i]` is the original-process step that this process's step i stands for; the model is always
    called with those original indices, so a network trained on 1000 steps samples with 250 or 50.
    Schedules stay float64 (numpy) and are gathered per call into x's device, in float64 for float64 x and
    float32 otherwise (as ADM's `.float()`: half-precision coefficients would lose the small betas).
    """

    def __init__(self, betas: np.ndarray, learn_sigma: bool = True, timestep_map: list[int] | None = None):
        betas = np.asarray(betas, dtype=np.float64)
        if betas.ndim != 1 or len(betas) == 0 or not ((betas > 0) & (betas <= 1)).all():
            raise ValueError("betas must be a non-empty 1-D array in (0, 1]")
        self.betas, self.learn_sigma, self.num_steps = betas, bool(learn_sigma), len(betas)
        self.timestep_map = list(range(self.num_steps)) if timestep_map is None else [int(s) for s in timestep_map]
        if len(self.timestep_map) != self.num_steps:
            raise ValueError(f"timestep_map has {len(self.timestep_map)} entries for {self.num_steps} steps")

        alphas = 1.0 - betas
        self.alphas_cumprod = abar = np.cumprod(alphas)
        self.alphas_cumprod_prev = abar_prev = np.append(1.0, abar[:-1])
        self.sqrt_alphas_cumprod = np.sqrt(abar)
        self.sqrt_one_minus_alphas_cumprod = np.sqrt(1.0 - abar)
        self.sqrt_recip_alphas_cumprod = np.sqrt(1.0 / abar)
        self.sqrt_recipm1_alphas_cumprod = np.sqrt(1.0 / abar - 1.0)
        self.log_betas = np.log(betas)
        # q(x_{t-1} | x_t, x_0) = N(coef1 x_0 + coef2 x_t, posterior_variance)
        self.posterior_variance = betas * (1.0 - abar_prev) / (1.0 - abar)
        self.posterior_mean_coef1 = betas * np.sqrt(abar_prev) / (1.0 - abar)
        self.posterior_mean_coef2 = (1.0 - abar_prev) * np.sqrt(alphas) / (1.0 - abar)
        # the posterior variance is 0 at t=0: its log is clipped to the t=1 value (what the t=0 decoder and
        # learned-range's lower end see)
        first = self.posterior_variance[1] if self.num_steps > 1 else betas[0]
        self.posterior_log_variance_clipped = np.log(np.append(first, self.posterior_variance[1:]))
        self._tables: dict[tuple, Tensor] = {}

    @classmethod
    def create(cls, num_steps: int = 1000, respacing: int | str | None = None,
               learn_sigma: bool = True) -> GaussianDiffusion:
        """DiT's `create_diffusion`: the linear schedule, respaced when `respacing` keeps fewer steps."""
        betas = linear_betas(num_steps)
        if respacing is None or respacing == "":
            return cls(betas, learn_sigma)
        keep = space_timesteps(num_steps, respacing)
        if len(keep) == num_steps:
            return cls(betas, learn_sigma)
        abar = np.cumprod(1.0 - betas)[keep]
        # the shorter chain's betas: its cumulative product hits the original alphas_cumprod at the kept steps
        return cls(1.0 - abar / np.append(1.0, abar[:-1]), learn_sigma, timestep_map=keep)

    # --- schedule lookup ------------------------------------------------------------------------------
    def _table(self, name: str, device: torch.device, dtype: torch.dtype) -> Tensor:
        # cached per device/dtype: one host->device copy per schedule, not one per training step
        key = (name, device, dtype)
        if key not in self._tables:
            self._tables[key] = torch.as_tensor(np.asarray(getattr(self, name))).to(device=device, dtype=dtype)
        return self._tables[key]

    def _at(self, name: str, t: Tensor, x: Tensor) -> Tensor:
        """Schedule `name` at steps t, shaped (B, 1, ...) to broadcast against x."""
        table = self._table(name, x.device, torch.promote_types(x.dtype, torch.float32))
        return table[torch.as_tensor(t, device=x.device)].view(-1, *[1] * (x.ndim - 1))

    def _model_t(self, t: Tensor) -> Tensor:
        """This process's steps -> the original-process indices the model is conditioned on (LongTensor)."""
        t = torch.as_tensor(t)
        return self._table("timestep_map", t.device, torch.long)[t]

    # --- forward process and posterior ----------------------------------------------------------------
    def q_sample(self, x0: Tensor, t: Tensor, noise: Tensor | None = None) -> Tensor:
        """x_t ~ q(x_t | x_0) = N(sqrt(abar_t) x_0, (1 - abar_t) I), with the given noise."""
        if noise is None:
            noise = torch.randn_like(x0)
        return self._at("sqrt_alphas_cumprod", t, x0) * x0 + self._at("sqrt_one_minus_alphas_cumprod", t, x0) * noise

    def q_posterior_mean_variance(self, x0: Tensor, xt: Tensor, t: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Mean, variance and clipped log-variance of q(x_{t-1} | x_t, x_0), each of xt's shape."""
        mean = self._at("posterior_mean_coef1", t, xt) * x0 + self._at("posterior_mean_coef2", t, xt) * xt
        var = self._at("posterior_variance", t, xt).expand_as(mean)
        return mean, var, self._at("posterior_log_variance_clipped", t, xt).expand_as(mean)

    # --- reverse process ------------------------------------------------------------------------------
    def p_mean_variance(self, model_out: Tensor, xt: Tensor, t: Tensor, clip_denoised: bool = False) -> dict:
        """p(x_{t-1} | x_t) from the model's output at x_t: mean, variance, log_variance, pred_x0 and eps.

        With learn_sigma, the second half of the channels, v in [-1, 1], interpolates the log-variance between
        the posterior's (v=-1, the lower bound) and beta's (v=+1, the upper bound), as iDDPM/DiT. Without it the
        variance is fixed to the posterior's (ADM's "fixed small"; DiT's create_diffusion would pick beta, "fixed
        large"; DiT always learns sigma). `eps` is the model's, re-derived from the clipped x0 when clipping.
        """
        B, C = xt.shape[:2]
        want = (B, 2 * C if self.learn_sigma else C, *xt.shape[2:])
        if tuple(model_out.shape) != want:
            raise ValueError(f"model output has shape {tuple(model_out.shape)}, expected {want}")
        min_log = self._at("posterior_log_variance_clipped", t, xt)
        if self.learn_sigma:
            eps, v = model_out.split(C, dim=1)
            frac = (v + 1) / 2
            log_var = frac * self._at("log_betas", t, xt) + (1 - frac) * min_log
        else:
            eps, log_var = model_out, min_log.expand_as(xt)
        recip, recipm1 = self._at("sqrt_recip_alphas_cumprod", t, xt), self._at("sqrt_recipm1_alphas_cumprod", t, xt)
        pred_x0 = recip * xt - recipm1 * eps
        if clip_denoised:
            pred_x0 = pred_x0.clamp(-1, 1)
            eps = (recip * xt - pred_x0) / recipm1
        mean, _, _ = self.q_posterior_mean_variance(pred_x0, xt, t)
        return {"mean": mean, "variance": torch.exp(log_var), "log_variance": log_var, "pred_x0": pred_x0, "eps": eps}

    def _vb_bits(self, out: dict, x0: Tensor, xt: Tensor, t: Tensor) -> Tensor:
        """One VLB term per sample, in bits per dimension: KL(q(x_{t-1}|x_t,x_0) || p(x_{t-1}|x_t)) for t > 0,
        the discretized decoder's NLL of x_0 at t = 0."""
        true_mean, _, true_log_var = self.q_posterior_mean_variance(x0, xt, t)
        kl = mean_flat(normal_kl(true_mean, true_log_var, out["mean"], out["log_variance"]))
        nll = -mean_flat(discretized_gaussian_log_likelihood(x0, out["mean"], 0.5 * out["log_variance"]))
        return torch.where(torch.as_tensor(t, device=x0.device) == 0, nll, kl) / math.log(2.0)

    def training_losses(self, model_fn: ModelFn, x0: Tensor, t: Tensor,
                        noise: Tensor | None = None) -> dict[str, Tensor]:
        """Per-sample (B,) "loss", "mse" (eps MSE) and "vb" (bits/dim) at this process's steps t.

        loss = mse + vb with learn_sigma (iDDPM's L_hybrid with lambda = 1, DiT's LossType.MSE), else mse;
        "vb" is still reported without learn_sigma, as a metric.
        """
        if noise is None:
            noise = torch.randn_like(x0)
        xt = self.q_sample(x0, t, noise)
        model_out = model_fn(xt, self._model_t(t).to(x0.device))
        C = x0.shape[1]
        eps = model_out[:, :C]
        mse = mean_flat((noise - eps) ** 2)
        # the VLB only trains sigma: with eps detached its gradient cannot pull the mean away from the MSE objective
        frozen = torch.cat([eps.detach(), model_out[:, C:]], dim=1)
        vb = self._vb_bits(self.p_mean_variance(frozen, xt, t), x0, xt, t)
        return {"loss": mse + vb if self.learn_sigma else mse, "mse": mse, "vb": vb}

    # --- sampling -------------------------------------------------------------------------------------
    @torch.no_grad()
    def sample(self, model_fn: ModelFn, shape: Sequence[int], *, method: str = "ddpm", eta: float = 0.0,
               noise: Tensor | None = None, generator: torch.Generator | None = None, device=None,
               clip_denoised: bool = False, progress: bool = False) -> Tensor:
        """x_0 samples: ancestral DDPM ("ddpm") or DDIM ("ddim"; eta=0 is deterministic, eta=1 matches DDPM with
        the posterior variance), from x_T = `noise` or fresh Gaussian noise, over all of this process's steps."""
        if method not in ("ddpm", "ddim"):
            raise ValueError(f"unknown sampling method {method!r}: expected 'ddpm' or 'ddim'")
        if method == "ddpm" and eta != 0:
            raise ValueError("eta only applies to method='ddim'")
        shape = tuple(shape)
        if noise is not None and tuple(noise.shape) != shape:
            raise ValueError(f"noise has shape {tuple(noise.shape)}, expected {shape}")
        if device is None:
            device = noise.device if noise is not None else _device_of(model_fn)

        def randn(size) -> Tensor:
            if generator is None:
                return torch.randn(size, device=device)
            # drawn where the generator lives (CPU for a default one), then moved: a seed gives the same samples
            # on any device, and the global RNG is never touched
            return torch.randn(size, generator=generator, device=generator.device).to(device)

        x = randn(shape) if noise is None else noise.to(device)
        steps = range(self.num_steps - 1, -1, -1)
        if progress:
            from tqdm.auto import tqdm
            steps = tqdm(steps, desc=f"{method} sampling")
        for i in steps:
            t = torch.full((shape[0],), i, dtype=torch.long, device=device)
            out = self.p_mean_variance(model_fn(x, self._model_t(t)), x, t, clip_denoised)
            if method == "ddpm":
                x = out["mean"]
                if i > 0:  # the last step returns the mean: no noise into x_0
                    x = x + torch.exp(0.5 * out["log_variance"]) * randn(shape)
            else:
                # DDIM (Song et al. eq. 12): x_{t-1} = sqrt(abar_prev) x0 + sqrt(1 - abar_prev - sigma^2) eps + sigma z
                abar, abar_prev = self._at("alphas_cumprod", t, x), self._at("alphas_cumprod_prev", t, x)
                sigma = eta * torch.sqrt((1 - abar_prev) / (1 - abar) * (1 - abar / abar_prev))
                x = out["pred_x0"] * torch.sqrt(abar_prev) + torch.sqrt(1 - abar_prev - sigma ** 2) * out["eps"]
                if eta != 0 and i > 0:  # sigma is 0 at the last step
                    x = x + sigma * randn(shape)
        return x


def _device_of(model_fn) -> torch.device:
    """The device of a module's first parameter; CPU for plain functions."""
    params = getattr(model_fn, "parameters", None)
    first = next(params(), None) if callable(params) else None
    return first.device if first is not None else torch.device("cpu")
