"""Gaussian diffusion as DiT uses it: schedule, respacing, forward process, posterior, hybrid loss and samplers,
each checked against quantities derived independently here (float64), never against the module's own tables."""
import math

import numpy as np
import pytest
import torch

from dyt.families.dit.gaussian_diffusion import GaussianDiffusion, linear_betas, mean_flat, space_timesteps

F64 = torch.float64


def ref_betas(n=1000):
    """Ho et al.'s linear schedule written out term by term (DiT scales it by 1000/n)."""
    return np.array([(1e-4 + (0.02 - 1e-4) * i / (n - 1)) * 1000 / n for i in range(n)])


def ref_abar(n=1000):
    return np.cumprod(1 - ref_betas(n))


def oracle(x0, v=-1.0, learn_sigma=True, seen=None):
    """A model that knows the single data point x0: it returns the exact eps of x_t (ORIGINAL-process t),
    and a constant v (v=-1: the posterior variance)."""
    abar = torch.tensor(ref_abar(), dtype=F64)

    def fn(x, t):
        if seen is not None:
            seen.append(t.clone())
        a = abar[t].view(-1, *[1] * (x.ndim - 1))
        eps = ((x.double() - a.sqrt() * x0.double()) / (1 - a).sqrt()).to(x.dtype)
        return torch.cat([eps, torch.full_like(eps, v)], 1) if learn_sigma else eps
    return fn


def Phi(u):
    """ADM's tanh approximation of the standard normal CDF."""
    return 0.5 * (1 + math.tanh(math.sqrt(2 / math.pi) * (u + 0.044715 * u ** 3)))


# --- schedule and respacing ---------------------------------------------------------------------------
def test_linear_betas():
    b = linear_betas()
    assert b.dtype == np.float64 and b.shape == (1000,)
    assert b[0] == pytest.approx(1e-4, abs=1e-18) and b[-1] == pytest.approx(0.02, abs=1e-17)
    np.testing.assert_allclose(b, ref_betas(), rtol=1e-12)
    b250 = linear_betas(250)  # scale 4: same total noise in fewer steps
    assert b250[0] == pytest.approx(4e-4) and b250[-1] == pytest.approx(0.08)


def test_space_timesteps_matches_adm_examples():
    # ADM's docstring example: 300 steps in 3 sections of 100, strided to 10, 15 and 20 steps
    s = space_timesteps(300, [10, 15, 20])
    assert [sum(lo <= x < lo + 100 for x in s) for lo in (0, 100, 200)] == [10, 15, 20]
    assert s[:10] == list(range(0, 100, 11)) and s[10:13] == [100, 107, 114]
    assert {0, 99, 100, 199, 200, 299} <= set(s)  # each section keeps both ends
    assert space_timesteps(300, "10,15,20") == s
    # 250 of 1000: stride 999/249 = 4.012..; the drift crosses a half step between the 41st and 42nd step
    s = space_timesteps(1000, "250")
    assert len(s) == 250 and s[:3] == [0, 4, 8] and s[40:44] == [160, 164, 169, 173] and s[-1] == 999
    assert space_timesteps(1000, 250) == s
    # uneven split: the first section is one step longer (334, 333, 333)
    s = space_timesteps(1000, "10,10,10")
    assert s[:2] == [0, 37] and s[9:11] == [333, 334]
    assert space_timesteps(1000, "ddim50") == list(range(0, 1000, 20))
    assert space_timesteps(1000, "ddim4") == [0, 250, 500, 750]
    assert space_timesteps(1000, 1000) == list(range(1000))


@pytest.mark.parametrize("n, spacing, match", [
    (1000, "ddim300", "stride"), (100, 200, "cannot take"), (1000, "10,600", "cannot take"),
    (1000, "ten", "cannot read"), (1000, "ddimx", "cannot read"), (1000, "0,0", "positive")])
def test_space_timesteps_rejects_impossible_requests(n, spacing, match):
    with pytest.raises(ValueError, match=match):
        space_timesteps(n, spacing)


@pytest.mark.parametrize("respacing", ["250", "ddim50", "10,20,30", 25])
def test_respaced_process_keeps_alphas_cumprod(respacing):
    d = GaussianDiffusion.create(1000, respacing)
    keep = space_timesteps(1000, respacing)
    assert d.timestep_map == keep and d.num_steps == len(keep)
    np.testing.assert_allclose(d.alphas_cumprod, ref_abar()[keep], rtol=1e-12)


@pytest.mark.parametrize("respacing", [None, "", 1000, "1000"])
def test_no_respacing_is_the_full_process(respacing):
    d = GaussianDiffusion.create(1000, respacing)
    assert d.num_steps == 1000 and d.timestep_map == list(range(1000))
    np.testing.assert_array_equal(d.betas, linear_betas())


# --- forward process and posterior --------------------------------------------------------------------
def test_q_sample():
    d = GaussianDiffusion.create()
    abar = ref_abar()
    x0, noise, t = torch.randn(3, 2, 4, dtype=F64), torch.randn(3, 2, 4, dtype=F64), torch.tensor([0, 417, 999])
    want = torch.stack([math.sqrt(abar[k]) * x0[i] + math.sqrt(1 - abar[k]) * noise[i]
                        for i, k in enumerate(t.tolist())])
    torch.testing.assert_close(d.q_sample(x0, t, noise), want, rtol=1e-12, atol=1e-12)
    # the distribution: over many noises, mean sqrt(abar) x0 and variance 1 - abar
    g = torch.Generator().manual_seed(0)
    n, x0 = 100_000, torch.tensor([0.7, -0.3])
    for k in (50, 600):
        xt = d.q_sample(x0.expand(n, 2), torch.full((n,), k), torch.randn(n, 2, generator=g))
        sd = math.sqrt((1 - abar[k]) / n)
        torch.testing.assert_close(xt.mean(0), math.sqrt(abar[k]) * x0, rtol=0, atol=5 * sd)
        torch.testing.assert_close(xt.var(0), torch.full((2,), 1 - abar[k]), rtol=0.03, atol=0)


@pytest.mark.parametrize("respacing", [None, "ddim50"])
def test_posterior_is_bayes_rule(respacing):
    d = GaussianDiffusion.create(1000, respacing)
    abar = ref_abar()[d.timestep_map]
    abar_prev = np.append(1.0, abar[:-1])
    g = torch.Generator().manual_seed(1)
    t = torch.tensor([1, 2, d.num_steps // 3, d.num_steps - 1])
    x0, xt = torch.randn(4, 3, 2, generator=g, dtype=F64), torch.randn(4, 3, 2, generator=g, dtype=F64)
    mean, var, log_var = d.q_posterior_mean_variance(x0, xt, t)
    assert mean.shape == var.shape == log_var.shape == xt.shape
    for i, k in enumerate(t.tolist()):
        # q(x_{t-1}|x0) = N(sqrt(abar_prev) x0, 1-abar_prev) times q(x_t|x_{t-1}) = N(sqrt(alpha) x_{t-1}, beta)
        alpha = abar[k] / abar_prev[k]
        beta = 1 - alpha
        v = 1 / (1 / (1 - abar_prev[k]) + alpha / beta)
        m = v * (math.sqrt(abar_prev[k]) * x0[i] / (1 - abar_prev[k]) + math.sqrt(alpha) * xt[i] / beta)
        torch.testing.assert_close(mean[i], m, rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(var[i], torch.full_like(m, v), rtol=1e-10, atol=0)
        torch.testing.assert_close(log_var[i], torch.full_like(m, math.log(v)), rtol=1e-10, atol=0)
    # at t=0 the posterior is a point mass on x0; its log-variance is clipped to the t=1 value
    mean0, var0, log_var0 = d.q_posterior_mean_variance(x0, xt, torch.zeros(4, dtype=torch.long))
    torch.testing.assert_close(mean0, x0, rtol=0, atol=1e-12)
    assert torch.all(var0 == 0)
    torch.testing.assert_close(log_var0, d.q_posterior_mean_variance(x0, xt, torch.ones(4, dtype=torch.long))[2])


def test_p_mean_variance_learned_range_and_clipping():
    d = GaussianDiffusion.create()
    t = torch.tensor([10, 700])
    xt, eps = torch.randn(2, 3, 4, dtype=F64) * 3, torch.randn(2, 3, 4, dtype=F64)
    post_log = torch.tensor([d.posterior_log_variance_clipped[k] for k in (10, 700)]).view(2, 1, 1)
    beta_log = torch.log(torch.tensor(ref_betas()[[10, 700]])).view(2, 1, 1)
    for v, want in [(-1.0, post_log), (1.0, beta_log), (0.0, (post_log + beta_log) / 2)]:
        out = d.p_mean_variance(torch.cat([eps, torch.full_like(eps, v)], 1), xt, t)
        torch.testing.assert_close(out["log_variance"], want.expand_as(xt), rtol=1e-12, atol=0)
        torch.testing.assert_close(out["variance"], want.exp().expand_as(xt), rtol=1e-12, atol=0)
    out = d.p_mean_variance(torch.cat([eps, eps.tanh()], 1), xt, t, clip_denoised=True)
    a = torch.tensor(ref_abar()[[10, 700]]).view(2, 1, 1)
    assert out["pred_x0"].abs().max() <= 1 and (out["pred_x0"].abs() == 1).any()  # some were clipped
    # eps stays consistent with the clipped x0, as DDIM needs
    torch.testing.assert_close(a.sqrt() * out["pred_x0"] + (1 - a).sqrt() * out["eps"], xt)
    with pytest.raises(ValueError, match="expected"):
        d.p_mean_variance(eps, xt, t)  # learn_sigma needs 2C channels


# --- training losses ----------------------------------------------------------------------------------
@pytest.mark.parametrize("respacing", [None, "250"])
def test_oracle_has_zero_loss_and_gets_original_timesteps(respacing):
    d = GaussianDiffusion.create(1000, respacing)
    g = torch.Generator().manual_seed(2)
    x0 = torch.rand(4, 3, 4, 4, generator=g, dtype=F64) * 2 - 1
    t = torch.tensor([1, 10, d.num_steps // 2, d.num_steps - 1])
    seen = []
    out = d.training_losses(oracle(x0, seen=seen), x0, t, noise=torch.randn(x0.shape, generator=g, dtype=F64))
    assert set(out) == {"loss", "mse", "vb"} and all(v.shape == (4,) for v in out.values())
    assert out["mse"].max() < 1e-20 and out["vb"].abs().max() < 1e-12
    torch.testing.assert_close(out["loss"], out["mse"] + out["vb"])
    assert seen[0].dtype == torch.long and seen[0].tolist() == [d.timestep_map[k] for k in t.tolist()]


def test_wrong_eps_and_wrong_sigma_cost_what_the_hand_computation_says():
    d = GaussianDiffusion.create()
    g = torch.Generator().manual_seed(3)
    x0 = torch.rand(3, 2, 5, generator=g, dtype=F64) * 2 - 1
    noise = torch.randn(x0.shape, generator=g, dtype=F64)
    t = torch.tensor([5, 300, 999])
    exact = oracle(x0)
    shift = lambda x, tm: exact(x, tm) + torch.cat([torch.full_like(x, 0.5), torch.zeros_like(x)], 1)  # noqa: E731
    shifted = d.training_losses(shift, x0, t, noise)
    torch.testing.assert_close(shifted["mse"], torch.full((3,), 0.25, dtype=F64), rtol=1e-9, atol=0)
    zero = d.training_losses(lambda x, tm: torch.cat([torch.zeros_like(x), -torch.ones_like(x)], 1), x0, t, noise)
    torch.testing.assert_close(zero["mse"], mean_flat(noise ** 2))
    # the right mean with sigma^2 = beta instead of the posterior variance: KL = (log r - 1 + 1/r) / 2 / log 2,
    # r = beta / posterior variance
    big = d.training_losses(oracle(x0, v=1.0), x0, t, noise)
    b, ab = ref_betas(), ref_abar()
    r = np.array([b[k] / (b[k] * (1 - ab[k - 1]) / (1 - ab[k])) for k in t.tolist()])
    kl_bits = torch.tensor((np.log(r) - 1 + 1 / r) / 2 / math.log(2))
    torch.testing.assert_close(big["vb"], kl_bits, rtol=1e-7, atol=1e-12)
    assert torch.all(big["mse"] < 1e-20)
    torch.testing.assert_close(big["loss"], big["mse"] + big["vb"])  # the hybrid loss: mse + vb, unweighted


def test_decoder_nll_at_t0_in_bits():
    # t=0, oracle mean (= x0) and v=+1: sigma = sqrt(beta_0) = 0.01, so a bin of half-width 1/255 spans
    # u = 1/2.55 standard deviations: interior pixels cost -log2(Phi(u) - Phi(-u)) = 1.7130 bits, edge pixels
    # (x0 = +-1, whose bins extend to infinity) -log2(Phi(u)) = 0.6159 bits
    d = GaussianDiffusion.create()
    x0 = torch.tensor([[-1.0, 1.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0]], dtype=F64).view(2, 1, 4)
    t0, noise = torch.zeros(2, dtype=torch.long), torch.randn(x0.shape, dtype=F64)
    out = d.training_losses(oracle(x0, v=1.0), x0, t0, noise)
    u = 1 / 2.55
    inner, edge = -math.log2(Phi(u) - Phi(-u)), -math.log2(Phi(u))
    assert inner == pytest.approx(1.7130, abs=1e-4) and edge == pytest.approx(0.6159, abs=1e-4)
    want = torch.tensor([(2 * edge + 2 * inner) / 4, inner], dtype=F64)  # row 0: two edge and two inner pixels
    torch.testing.assert_close(out["vb"], want, rtol=1e-6, atol=0)
    # v=-1: sigma^2 = the posterior variance of t=1 (the clipped value), a narrower bin-relative width
    out = d.training_losses(oracle(x0), x0, t0, noise)
    b, ab = ref_betas(), ref_abar()
    u = 1 / 255 / math.sqrt(b[1] * (1 - ab[0]) / (1 - ab[1]))
    torch.testing.assert_close(out["vb"][1], torch.tensor(-math.log2(Phi(u) - Phi(-u)), dtype=F64), rtol=1e-6, atol=0)


def test_vb_trains_only_sigma():
    d = GaussianDiffusion.create()
    x0 = torch.rand(2, 3, 4) * 2 - 1
    out_param = (torch.randn(2, 6, 4) * 0.5).requires_grad_()
    losses = d.training_losses(lambda x, t: out_param, x0, torch.tensor([0, 400]))
    (g_vb,) = torch.autograd.grad(losses["vb"].sum(), out_param, retain_graph=True)
    assert torch.all(g_vb[:, :3] == 0) and torch.all(g_vb[:, 3:].abs().sum((1, 2)) > 0)
    (g_mse,) = torch.autograd.grad(losses["mse"].sum(), out_param)
    assert torch.all(g_mse[:, 3:] == 0) and torch.all(g_mse[:, :3].abs().sum((1, 2)) > 0)


def test_fixed_variance_is_the_posterior_variance():
    d = GaussianDiffusion.create(learn_sigma=False)
    xt, eps, t = torch.randn(2, 3, 4), torch.randn(2, 3, 4), torch.tensor([0, 500])
    fixed = d.p_mean_variance(eps, xt, t)
    learned = GaussianDiffusion.create().p_mean_variance(torch.cat([eps, -torch.ones_like(eps)], 1), xt, t)
    for k in ("mean", "log_variance", "pred_x0"):
        torch.testing.assert_close(fixed[k], learned[k])
    x0 = torch.rand(2, 3, 4) * 2 - 1
    out = d.training_losses(oracle(x0, learn_sigma=False), x0, t)
    assert torch.equal(out["loss"], out["mse"]) and out["vb"].shape == (2,)


# --- sampling -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("respacing", [None, "ddim50"])
def test_ddim_deterministic_with_oracle_recovers_x0(respacing):
    d = GaussianDiffusion.create(1000, respacing)
    x0 = torch.rand(2, 3, 4, 4) * 2 - 1
    for seed in (0, 1):
        xT = torch.randn(x0.shape, generator=torch.Generator().manual_seed(seed))
        torch.testing.assert_close(d.sample(oracle(x0), x0.shape, method="ddim", noise=xT), x0, rtol=0, atol=1e-4)


@pytest.mark.parametrize("respacing", [None, "250"])
def test_ddpm_with_oracle_recovers_x0(respacing):
    d = GaussianDiffusion.create(1000, respacing)
    x0 = torch.rand(2, 3, 4, 4) * 2 - 1
    out = d.sample(oracle(x0), x0.shape, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(out, x0, rtol=0, atol=1e-4)


def toy_model(x, t):
    """Some eps depending on x and t, with v = -1 (the posterior variance)."""
    eps = torch.tanh(0.8 * x.roll(1, dims=1) + t.view(-1, 1, 1, 1) / 1000)
    return torch.cat([eps, -torch.ones_like(eps)], 1)


@pytest.mark.parametrize("respacing", [None, "ddim50"])
def test_ddim_eta1_is_ddpm_with_posterior_variance(respacing):
    # eta=1 makes DDIM's sigma the posterior std and its mean the posterior mean: DDPM's chain, noise for noise
    d = GaussianDiffusion.create(1000, respacing)
    shape = (2, 3, 4, 4)
    ddpm = d.sample(toy_model, shape, generator=torch.Generator().manual_seed(4))
    ddim = d.sample(toy_model, shape, method="ddim", eta=1.0, generator=torch.Generator().manual_seed(4))
    torch.testing.assert_close(ddim, ddpm, rtol=1e-4, atol=1e-4)
    half = d.sample(toy_model, shape, method="ddim", eta=0.5, generator=torch.Generator().manual_seed(4))
    assert (half - ddpm).abs().max() > 1e-2


def test_fixed_variance_samples_like_learned_posterior_variance():
    fixed = GaussianDiffusion.create(1000, "ddim25", learn_sigma=False)
    learned = GaussianDiffusion.create(1000, "ddim25")
    shape = (2, 3, 4, 4)
    a = fixed.sample(lambda x, t: toy_model(x, t)[:, :3], shape, generator=torch.Generator().manual_seed(5))
    b = learned.sample(toy_model, shape, generator=torch.Generator().manual_seed(5))
    torch.testing.assert_close(a, b)


@pytest.mark.parametrize("method, eta", [("ddpm", 0.0), ("ddim", 0.3)])
def test_sampling_randomness_comes_from_the_generator_only(method, eta):
    d = GaussianDiffusion.create(1000, "ddim20")
    shape = (2, 3, 4, 4)
    state = torch.get_rng_state()
    a, b, c = (d.sample(toy_model, shape, method=method, eta=eta, generator=torch.Generator().manual_seed(s))
               for s in (7, 7, 8))
    assert torch.equal(torch.get_rng_state(), state)
    assert torch.equal(a, b) and (a - c).abs().max() > 1e-2
    # x_T is the generator's first draw
    g = torch.Generator().manual_seed(7)
    xT = torch.randn(shape, generator=g)
    again = d.sample(toy_model, shape, method=method, eta=eta, noise=xT, generator=g)
    torch.testing.assert_close(again, a, rtol=0, atol=0)


def test_sample_arguments(capsys):
    d = GaussianDiffusion.create(1000, "ddim10")
    with pytest.raises(ValueError, match="unknown sampling method"):
        d.sample(toy_model, (1, 3, 2, 2), method="euler")
    with pytest.raises(ValueError, match="eta"):
        d.sample(toy_model, (1, 3, 2, 2), eta=0.5)
    with pytest.raises(ValueError, match="noise has shape"):
        d.sample(toy_model, (1, 3, 2, 2), noise=torch.zeros(2, 3, 2, 2))
    out = d.sample(toy_model, (1, 3, 2, 2), method="ddim", progress=True, clip_denoised=True)
    assert out.shape == (1, 3, 2, 2) and out.abs().max() <= 1 + 1e-6  # the last DDIM step returns the clipped x0
    assert "10/10" in capsys.readouterr().err
