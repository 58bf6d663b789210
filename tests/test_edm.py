"""diffax.edm and diffax.models.preconditioned: exact checks against EDM (Karras et al. 2022) closed forms.

Gaussian data x0 ~ N(mu, s^2 I) make the denoiser affine, D(x; sigma) = (s^2 x + sigma^2 mu) / (s^2 + sigma^2),
so Algorithm 2 without churn is an affine map of the latents (computed here independently in NumPy
float64), and the probability-flow ODE dx/dsigma = (x - D) / sigma has the closed form
x(sigma) = mu + (x(sigma_max) - mu) sqrt(s^2 + sigma^2) / sqrt(s^2 + sigma_max^2).
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.experimental import io_callback

from diffax import diffusion, edm, schedules
from diffax.models.mlp import MLP
from diffax.models.preconditioned import Preconditioned
from diffax.oracles import anisotropic_mixture_2d

SIGMAS = np.array([0.002, 0.03, 0.5, 1.0, 2.7, 80.0])
MU, S = 0.3, 0.5


def gaussian_denoiser(mu=MU, s=S):
    return lambda x, sigma: (s**2 * x + (sigma**2)[:, None] * mu) / (s**2 + (sigma**2)[:, None])


def np_grid(n, sigma_min=0.002, sigma_max=80.0, rho=7.0):
    """EDM eq. 5 written out independently of `edm.edm_sigmas`."""
    t = [(sigma_max ** (1 / rho) + i / (n - 1) * (sigma_min ** (1 / rho) - sigma_max ** (1 / rho))) ** rho
         for i in range(n)]
    return np.array(t + [0.0])


def np_affine_heun(n, mu=MU, s=S, **grid):
    """(A, c) with x_N = A x_latent + c for Algorithm 2 (no churn) on Gaussian data: each step maps the
    centred y = x - mu linearly, y' = g_i y, with g_i composed from the Euler and Heun slopes
    d(sigma) = sigma y / (s^2 + sigma^2)."""
    t = np_grid(n, **grid)
    slope = lambda sig: sig / (s**2 + sig**2)  # d = slope * y
    g = 1.0
    for i in range(n):
        h = t[i + 1] - t[i]
        e = 1.0 + h * slope(t[i])  # Euler
        if i < n - 1:
            e = 1.0 + h * 0.5 * (slope(t[i]) + slope(t[i + 1]) * e)  # Heun
        g *= e
    return g * t[0], mu * (1.0 - g)


# --------------------------------------------------------------------------- precondition


def test_precondition_table1(x64):
    sig = jnp.asarray(SIGMAS)
    sd = 0.5
    c = edm.precondition("edm", sig, sigma_data=sd)
    want = (sd**2 / (SIGMAS**2 + sd**2), SIGMAS * sd / np.sqrt(SIGMAS**2 + sd**2),
            1 / np.sqrt(SIGMAS**2 + sd**2), np.log(SIGMAS) / 4)
    for got, w in zip(c, want):
        np.testing.assert_allclose(np.asarray(got), w, rtol=1e-12, atol=1e-15)
    # sigma_data is honoured
    np.testing.assert_allclose(np.asarray(edm.precondition("edm", sig, sigma_data=1.3)[0]),
                               1.69 / (SIGMAS**2 + 1.69), rtol=1e-12)
    c = edm.precondition("ve", sig)
    for got, w in zip(c, (np.ones_like(SIGMAS), SIGMAS, np.ones_like(SIGMAS), np.log(0.5 * SIGMAS))):
        np.testing.assert_allclose(np.asarray(got), w, rtol=1e-12, atol=1e-15)
    # VP, as NVlabs VPPrecond: sigma_inv(sigma) = (sqrt(b_min^2 + 2 b_d log(1 + sigma^2)) - b_min) / b_d
    bd, bm = 19.9, 0.1
    # (log1p: NVlabs' log(1 + sigma^2) loses 3e-11 relative at sigma = 0.002 in float64)
    t = (np.sqrt(bm**2 + 2 * bd * np.log1p(SIGMAS**2)) - bm) / bd
    c = edm.precondition("vp", sig)
    for got, w in zip(c, (np.ones_like(SIGMAS), -SIGMAS, 1 / np.sqrt(SIGMAS**2 + 1), 999 * t)):
        np.testing.assert_allclose(np.asarray(got), w, rtol=1e-12, atol=1e-15)
    # ... and sigma_inv inverts VPPrecond.sigma(t) = sqrt(exp(b_d t^2 / 2 + b_min t) - 1)
    np.testing.assert_allclose(np.sqrt(np.expm1(0.5 * bd * t**2 + bm * t)), SIGMAS, rtol=1e-12)
    # negative control: M = 1000 (not M - 1) would differ
    assert np.max(np.abs(np.asarray(c[3]) - 1000 * t)) > 1e-3


def test_precondition_bad_kind_names_it():
    with pytest.raises(ValueError, match=r"'idpm'.*\['edm', 'vp', 've'\]"):
        edm.precondition("idpm", 1.0)


def test_edm_denoiser_of_unit_net_is_optimal_for_sigma_data_gaussian(x64):
    """With the 'edm' coefficients, D = c_skip x is E[y | x] for y ~ N(0, sigma_d^2) (F = 0 optimal):
    Table 1's c_skip = sigma_d^2 / (sigma^2 + sigma_d^2) is the Wiener gain."""
    c_skip = edm.precondition("edm", jnp.asarray(SIGMAS), sigma_data=0.5)[0]
    x = jnp.asarray(np.linspace(-3, 3, len(SIGMAS)))
    np.testing.assert_allclose(np.asarray(c_skip * x),
                               np.asarray(gaussian_denoiser(0.0, 0.5)(x[:, None], jnp.asarray(SIGMAS))[:, 0]),
                               rtol=1e-12, atol=1e-15)


# --------------------------------------------------------------------------- loss


def test_loss_weight_formula(x64):
    sig = jnp.asarray(SIGMAS)
    np.testing.assert_allclose(np.asarray(edm.loss_weight(sig, sigma_data=0.7)),
                               (SIGMAS**2 + 0.49) / (SIGMAS * 0.7) ** 2, rtol=1e-12)
    # lambda = 1 / c_out^2 (EDM Table 1)
    c_out = edm.precondition("edm", sig, sigma_data=0.7)[1]
    np.testing.assert_allclose(np.asarray(edm.loss_weight(sig, sigma_data=0.7) * c_out**2), 1.0, rtol=1e-12)


def test_edm_loss_matches_hand_computation(x64):
    key = jax.random.PRNGKey(3)
    x0 = jax.random.normal(jax.random.PRNGKey(0), (5, 3, 2), jnp.float64)
    den = lambda x, s: 0.9 * x + 0.1 * s[:, None, None]
    got = edm.edm_loss(den, key, x0, p_mean=-1.0, p_std=0.8, sigma_data=0.6)
    ks, kn = jax.random.split(key)
    sig = jnp.exp(jax.random.normal(ks, (5,), jnp.float64) * 0.8 - 1.0)
    xn = x0 + jax.random.normal(kn, x0.shape, jnp.float64) * sig[:, None, None]
    want = (sig**2 + 0.36) / (sig * 0.6) ** 2 * jnp.mean((den(xn, sig) - x0) ** 2, axis=(1, 2))
    assert got.shape == (5,)
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-12)


def test_edm_loss_of_optimal_denoiser_is_one(x64):
    """Data N(0, sigma_d^2 I), D = the exact posterior mean: per dim, lambda(sigma) (D - y)^2 is chi^2_1
    at every sigma, so the per-example loss (mean over d dims) has mean 1 and variance 2 / d. Negative
    control: data std 0.4 != sigma_d = 0.5 gives a mean loss off by more than the Monte Carlo bound."""
    b, d = 8192, 8
    se = math.sqrt(2.0 / d / b)

    def mean_loss(s):
        x0 = s * jax.random.normal(jax.random.PRNGKey(1), (b, d), jnp.float64)
        return float(jnp.mean(edm.edm_loss(gaussian_denoiser(0.0, s), jax.random.PRNGKey(2), x0)))

    assert abs(mean_loss(0.5) - 1.0) < 4 * se
    assert abs(mean_loss(0.4) - 1.0) > 4 * se


# --------------------------------------------------------------------------- sigma grid


def test_edm_sigmas(x64):
    n = 18
    t = np.asarray(edm.edm_sigmas(n))
    assert t.shape == (n + 1,)
    np.testing.assert_allclose(t, np_grid(n), rtol=1e-14, atol=0)
    np.testing.assert_allclose([t[0], t[-2]], [80.0, 0.002], rtol=1e-14)
    assert t[-1] == 0.0 and np.all(np.diff(t) < 0)
    t2 = np.asarray(edm.edm_sigmas(5, sigma_min=0.01, sigma_max=10.0, rho=3.0))
    np.testing.assert_allclose(t2, np_grid(5, 0.01, 10.0, 3.0), rtol=1e-14)
    with pytest.raises(ValueError, match="num_steps"):
        edm.edm_sigmas(1)
    with pytest.raises(ValueError, match="sigma_max must be > sigma_min"):
        edm.edm_sigmas(4, sigma_min=1.0, sigma_max=0.5)


# --------------------------------------------------------------------------- sampler


def test_edm_sampler_gaussian_is_the_affine_map(x64):
    n = 18
    lat = jax.random.normal(jax.random.PRNGKey(0), (6, 3), jnp.float64)
    got = np.asarray(edm.edm_sampler(gaussian_denoiser(), lat, num_steps=n))
    a, c = np_affine_heun(n)
    np.testing.assert_allclose(got, a * np.asarray(lat) + c, rtol=0, atol=1e-10)
    # negative controls: one step fewer; the sigma grid shifted (rho 6.9, sigma_max 79)
    for a2, c2 in (np_affine_heun(n - 1), np_affine_heun(n, rho=6.9), np_affine_heun(n, sigma_max=79.0)):
        assert np.max(np.abs(got - (a2 * np.asarray(lat) + c2))) > 1e-6


def test_edm_sampler_converges_to_the_ode_at_second_order(x64):
    """Against the exact flow to sigma_min followed by the sampler's own last (Euler) step to 0,
    D(x(sigma_min); sigma_min): the remaining error is Heun's global error, O(N^-2)."""
    lat = jnp.asarray([[-1.3], [0.4], [2.0]], jnp.float64)
    smin, smax = 0.002, 80.0
    x_min = MU + (80.0 * np.asarray(lat) - MU) * math.sqrt(S**2 + smin**2) / math.sqrt(S**2 + smax**2)
    exact = (S**2 * x_min + smin**2 * MU) / (S**2 + smin**2)
    ns = np.array([32, 64, 128, 256])
    errs = np.array([np.max(np.abs(np.asarray(edm.edm_sampler(gaussian_denoiser(), lat, num_steps=int(n))) - exact))
                     for n in ns])
    order = -np.polyfit(np.log(ns), np.log(errs), 1)[0]
    assert abs(order - 2.0) < 0.4, (errs, order)
    assert errs[-1] < 3e-4, errs  # measured 2.18e-4 at N = 256 (1.57e-2 at N = 32)


def test_edm_sampler_nfe_is_2n_minus_1():
    calls = []

    def den(x, sigma):
        io_callback(lambda s: calls.append(float(s[0])), None, sigma, ordered=True)
        return 0.5 * x

    n = 7
    jax.block_until_ready(edm.edm_sampler(den, jnp.ones((2, 2)), num_steps=n))
    assert len(calls) == 2 * n - 1
    t = np.asarray(edm.edm_sigmas(n))
    # Euler at t_0..t_{N-1}, Heun at t_1..t_{N-1}: never at sigma = 0
    np.testing.assert_allclose(sorted(calls), sorted(list(t[:n]) + list(t[1:n])), rtol=1e-6)


def test_edm_sampler_churn_key_rules_and_determinism(x64):
    lat = jax.random.normal(jax.random.PRNGKey(0), (4, 2), jnp.float64)
    den = gaussian_denoiser()
    base = edm.edm_sampler(den, lat, num_steps=10)
    np.testing.assert_array_equal(np.asarray(edm.edm_sampler(den, lat, num_steps=10, key=jax.random.PRNGKey(5))),
                                  np.asarray(base))
    with pytest.raises(ValueError, match="S_churn=.*needs a key"):
        edm.edm_sampler(den, lat, num_steps=10, S_churn=5.0)
    kw = dict(num_steps=10, S_churn=5.0, S_min=0.05, S_max=50.0)
    a = edm.edm_sampler(den, lat, key=jax.random.PRNGKey(1), **kw)
    np.testing.assert_array_equal(np.asarray(a), np.asarray(edm.edm_sampler(den, lat, key=jax.random.PRNGKey(1), **kw)))
    assert np.max(np.abs(np.asarray(a) - np.asarray(edm.edm_sampler(den, lat, key=jax.random.PRNGKey(2), **kw)))) > 1e-3
    assert np.max(np.abs(np.asarray(a) - np.asarray(base))) > 1e-3


def np_churn_moments(n, s_churn, s_min, s_max, mu=MU, s=S, s_noise=1.0):
    """Mean and variance of Algorithm 2's output on Gaussian data with latents ~ N(0, 1): every step is
    y -> g (y + tau eps), y = x - mu, so (mean, var) of y evolve as (g m, g^2 (v + tau^2))."""
    t = np_grid(n)
    slope = lambda sig: sig / (s**2 + sig**2)
    m, v = -mu, t[0] ** 2  # y_0 = t_0 * latent - mu
    for i in range(n):
        gamma = min(s_churn / n, math.sqrt(2) - 1) if s_min <= t[i] <= s_max else 0.0
        th = t[i] * (1 + gamma)
        v += (th**2 - t[i] ** 2) * s_noise**2
        h = t[i + 1] - th
        g = 1.0 + h * slope(th)
        if i < n - 1:
            g = 1.0 + h * 0.5 * (slope(th) + slope(t[i + 1]) * g)
        m, v = g * m, g * g * v
    return m + mu, v


def test_edm_sampler_churn_moments_monte_carlo(x64):
    """With churn the output is Gaussian with the mean and variance of `np_churn_moments`; 40000 samples
    match them within 4 standard errors.
    Negative control: the moments with S_noise = 1.1 (a small error in the injected noise) are rejected."""
    n, b = 12, 40000
    kw = dict(num_steps=n, S_churn=8.0, S_min=0.05, S_max=10.0)
    lat = jax.random.normal(jax.random.PRNGKey(0), (b, 1), jnp.float64)
    x = np.asarray(edm.edm_sampler(gaussian_denoiser(), lat, key=jax.random.PRNGKey(9), **kw))[:, 0]
    m, v = np_churn_moments(n, 8.0, 0.05, 10.0)
    se_m, se_v = math.sqrt(v / b), v * math.sqrt(2.0 / (b - 1))
    assert abs(x.mean() - m) < 4 * se_m and abs(x.var(ddof=1) - v) < 4 * se_v
    # the moments approach the data law N(mu, s^2) as N grows (churn scaled with N; measured at N = 128:
    # mean error 5.6e-10, variance 0.2548 against 0.25; N = 12 is coarse: variance 0.398)
    m128, v128 = np_churn_moments(128, 8.0 * 128 / 12, 0.05, 10.0)
    assert abs(m128 - MU) < 1e-6 and abs(v128 - S**2) < 0.03 * S**2
    _, v_bad = np_churn_moments(n, 8.0, 0.05, 10.0, s_noise=1.1)
    assert abs(x.var(ddof=1) - v_bad) > 4 * se_v


# --------------------------------------------------------------------------- discrete models as EDM denoisers


@pytest.mark.parametrize("mean_type", ["eps", "x0", "v"])
def test_denoiser_from_discrete_is_exact_at_every_sigma_k(x64, mean_type):
    s = schedules.linear(200)
    mix = anisotropic_mixture_2d(s)

    def model_fn(x_t, t, shift=0):
        t = jnp.clip(t + shift, 0, s.num_timesteps - 1)
        eps = mix.eps(x_t, t)
        if mean_type == "x0":
            return diffusion.eps_to_x0(s, x_t, t, eps)
        if mean_type == "v":
            return diffusion.eps_to_v(s, x_t, t, eps)
        return eps

    sig = jnp.sqrt(1.0 / s.alphas_cumprod - 1.0)  # every sigma_k, one per row
    x0 = mix.sample(jax.random.PRNGKey(0), s.num_timesteps)
    x = x0 + sig[:, None] * jax.random.normal(jax.random.PRNGKey(1), x0.shape, jnp.float64)
    exact = mix.posterior_mean_scaled(x, jnp.ones_like(sig), sig**2)
    got = edm.denoiser_from_discrete(model_fn, s, mean_type=mean_type)(x, sig)
    err = np.abs(np.asarray(got - exact)).max(axis=-1) / (1.0 + np.abs(np.asarray(exact)).max(axis=-1))
    assert err.max() < 1e-9, err.max()
    # negative control: the model called at index k + 1
    bad = edm.denoiser_from_discrete(lambda x_t, t: model_fn(x_t, t, shift=1), s, mean_type=mean_type)(x, sig)
    off = np.abs(np.asarray(bad - exact)).max(axis=-1)
    assert off[:100].min() > 1e-6, off[:100].min()


def test_denoiser_from_discrete_nearest_index_and_learned_variance(x64):
    """Off-grid sigma uses the nearest sigma_k (round_sigma), x / sqrt(1 + sigma^2) is the model input,
    and a 2C-channel (learned variance) output is split, its first half used."""
    s = schedules.linear(50)
    sig_k = np.sqrt(1.0 / np.asarray(s.alphas_cumprod) - 1.0)
    seen = {}

    def model_fn(x_t, t):
        seen["t"], seen["x_t"] = t, x_t
        return jnp.concatenate([jnp.zeros_like(x_t), jnp.full_like(x_t, 7.0)], axis=-1)

    sigma = jnp.asarray([0.6 * sig_k[10] + 0.4 * sig_k[11], 0.4 * sig_k[10] + 0.6 * sig_k[11], 1e3, 1e-9])
    x = jnp.ones((4, 3), jnp.float64)
    out = edm.denoiser_from_discrete(model_fn, s)(x, sigma)
    np.testing.assert_array_equal(np.asarray(seen["t"]), [10, 11, 49, 0])
    want_x_t = np.ones((4, 3)) / np.sqrt(1.0 + np.asarray(sigma)[:, None] ** 2)
    np.testing.assert_allclose(np.asarray(seen["x_t"]), want_x_t, rtol=1e-14)
    # eps = 0 -> x0 = x_t / sqrt(abar_k)
    k = np.array([10, 11, 49, 0])
    np.testing.assert_allclose(np.asarray(out), np.asarray(seen["x_t"]) * np.sqrt(1 + sig_k[k] ** 2)[:, None],
                               rtol=1e-12)


def test_edm_sampler_runs_a_discrete_model_to_the_data(x64):
    """edm_sampler on the exact discrete oracle (via denoiser_from_discrete): the samples' mean matches the
    mixture's mean within a Monte Carlo bound (a smoke check that the two pieces compose)."""
    s = schedules.linear(1000)
    mix = anisotropic_mixture_2d(s)
    den = edm.denoiser_from_discrete(mix.eps, s)
    sig = np.sqrt(1.0 / np.asarray(s.alphas_cumprod) - 1.0)
    b = 4000
    lat = jax.random.normal(jax.random.PRNGKey(0), (b, 2), jnp.float64)
    x = np.asarray(edm.edm_sampler(den, lat, num_steps=40, sigma_min=float(sig[0]), sigma_max=float(sig[-1])))
    mean = np.sum(np.asarray(mix.weights)[:, None] * np.asarray(mix.means), axis=0)
    sd = np.asarray(mix.sample(jax.random.PRNGKey(3), 100000)).std(axis=0)
    assert np.all(np.abs(x.mean(axis=0) - mean) < 4 * sd / math.sqrt(b)), (x.mean(axis=0), mean)


# --------------------------------------------------------------------------- the Flax wrapper


def _net_and_params(dtype=None, num_classes=None, kind="edm", sigma_data=0.5):
    net = MLP(hidden=32, num_layers=2, time_embed_dim=16, num_classes=num_classes, dtype=dtype)
    model = Preconditioned(net, kind=kind, sigma_data=sigma_data)
    x = jax.random.normal(jax.random.PRNGKey(0), (4, 3))
    y = None if num_classes is None else jnp.zeros((4,), jnp.int32)
    params = model.init(jax.random.PRNGKey(1), x, jnp.ones((4,)), y=y)
    return net, model, params, x


@pytest.mark.parametrize("kind", ["edm", "vp", "ve"])
def test_preconditioned_equals_hand_formula(kind):
    net, model, params, x = _net_and_params(kind=kind, sigma_data=0.7)
    params = jax.tree_util.tree_map(lambda p: p + 0.1, params)  # non-zero everywhere
    sigma = jnp.asarray([0.01, 0.5, 3.0, 40.0])
    got = model.apply(params, x, sigma)
    c_skip, c_out, c_in, c_noise = edm.precondition(kind, sigma, sigma_data=0.7)
    f = net.apply({"params": params["params"]["net"]}, c_in[:, None] * x, c_noise)
    want = c_skip[:, None] * x + c_out[:, None] * f
    assert got.dtype == jnp.float32
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-6, atol=1e-6)
    # negative control: raw sigma fed as the time input instead of c_noise
    f_bad = net.apply({"params": params["params"]["net"]}, c_in[:, None] * x, sigma)
    assert np.max(np.abs(np.asarray(c_skip[:, None] * x + c_out[:, None] * f_bad - got))) > 1e-4


def test_preconditioned_float32_under_bfloat16_and_labels_pass_through():
    net, model, params, x = _net_and_params(dtype=jnp.bfloat16, num_classes=3)
    params = jax.tree_util.tree_map(lambda p: p + 0.05, params)
    sigma = jnp.asarray([0.1, 1.0, 5.0, 20.0])
    y = jnp.asarray([0, 1, 2, 3], jnp.int32)  # 3 = the null label
    got = model.apply(params, x, sigma, y=y)
    assert got.dtype == jnp.float32
    c_skip, c_out, c_in, c_noise = edm.precondition("edm", sigma)
    f = net.apply({"params": params["params"]["net"]}, c_in[:, None] * x, c_noise, y=y)
    want = c_skip[:, None] * x + c_out[:, None] * f.astype(jnp.float32)
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-6, atol=1e-6)
    other = model.apply(params, x, sigma, y=jnp.asarray([1, 2, 0, 0], jnp.int32))
    assert np.max(np.abs(np.asarray(other - got))) > 1e-3
    # the null label is what y=None means
    np.testing.assert_array_equal(np.asarray(model.apply(params, x, sigma, y=jnp.full((4,), 3, jnp.int32))),
                                  np.asarray(model.apply(params, x, sigma)))


@pytest.mark.slow  # 16-27 s measured on the loaded 2-core machine (bfloat16 UNet compile on CPU)
def test_preconditioned_unet_bfloat16_float_c_noise():
    """The real image network: a tiny bfloat16 UNet takes the float c_noise (its sinusoidal
    `timestep_embedding` accepts real t) and labels; D is float32 and equals the hand formula."""
    from diffax.models.unet import UNet

    net = UNet(ch=16, ch_mult=(1,), num_res_blocks=1, attn_resolutions=(), dropout=0.0, num_classes=3,
               dtype=jnp.bfloat16)
    model = Preconditioned(net, kind="edm")
    x = jax.random.normal(jax.random.PRNGKey(0), (2, 4, 4, 1))
    sigma, y = jnp.asarray([0.05, 7.0]), jnp.asarray([0, 2], jnp.int32)
    params = model.init(jax.random.PRNGKey(1), x, sigma, y=y)
    params = jax.tree_util.tree_map(lambda p: p + 0.01, params)  # conv_out is zero-initialised
    got = model.apply(params, x, sigma, y=y)
    assert got.dtype == jnp.float32
    c_skip, c_out, c_in, c_noise = edm.precondition("edm", sigma)
    f = net.apply({"params": params["params"]["net"]}, c_in[:, None, None, None] * x, c_noise, y=y)
    want = c_skip[:, None, None, None] * x + c_out[:, None, None, None] * f.astype(jnp.float32)
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-6, atol=1e-6)
    assert np.max(np.abs(np.asarray(f))) > 1e-3  # F is not trivially zero
