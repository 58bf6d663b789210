"""Tests for diffax.interpolation: slerp geometry, DDPM (stochastic-encoder) interpolation on
Gaussian data where the reverse chain is exact, and DDIM inversion (exact algebra with a constant
eps model; first-order reconstruction with the oracle's eps)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffax import diffusion, interpolation, oracles, samplers, schedules

# --------------------------------------------------------------------------- slerp


def _pair(rng: np.random.Generator, shape=(16, 3, 5)):
    """Two standard-normal arrays (NumPy, float64: no compiles; cast by jnp under the x64 fixture)."""
    return jnp.asarray(rng.standard_normal(shape)), jnp.asarray(rng.standard_normal(shape))


def _norms(z):
    return jnp.sqrt(jnp.sum(z**2, axis=tuple(range(1, z.ndim))))


def _angle(a, b):
    cos = jnp.sum(a * b, axis=tuple(range(1, a.ndim))) / (_norms(a) * _norms(b))
    return jnp.arccos(jnp.clip(cos, -1.0, 1.0))


def test_slerp_endpoints_norm_and_angle(x64):
    z0, z1 = _pair(np.random.default_rng(0))
    alphas = (0.1, 0.25, 0.5, 0.9)

    @jax.jit
    def paths(z0, z1):
        z1n = z1 * (_norms(z0) / _norms(z1))[:, None, None]  # same norm as z0, per example
        arcs = [interpolation.slerp(z0, z1n, a) for a in alphas]
        return (interpolation.slerp(z0, z1, 0.0), interpolation.slerp(z0, z1, 1.0), _norms(z0),
                _angle(z0, z1n), [_norms(z) for z in arcs], [_angle(z0, z) for z in arcs],
                _norms(0.5 * (z0 + z1n)))  # fmt: skip

    start, end, n0, theta, arc_norms, arc_angles, lerp_norm = paths(z0, z1)
    np.testing.assert_allclose(start, z0, atol=1e-12)
    np.testing.assert_allclose(end, z1, atol=1e-12)
    # Equal norms: the arc keeps the norm, and the angle to z0 grows linearly, alpha * theta
    # (float64 round-off; arccos near 0 loses ~sqrt(eps) ~ 1e-8, hence 1e-7 on angles).
    for a, norm, angle in zip(alphas, arc_norms, arc_angles):
        np.testing.assert_allclose(norm, n0, rtol=1e-12)
        np.testing.assert_allclose(angle, a * theta, atol=1e-7)
    # Negative control: the linear midpoint shrinks the norm by cos(theta / 2) < 1.
    np.testing.assert_allclose(lerp_norm, n0 * np.cos(theta / 2), rtol=1e-12)
    assert float(np.max(lerp_norm / n0)) < 0.99


def test_slerp_per_example_alpha_and_parallel_fallback(x64):
    z0, z1 = _pair(np.random.default_rng(1), (4, 6))
    alpha = jnp.array([0.0, 0.3, 0.7, 1.0])

    @jax.jit
    def paths(z0, z1):
        singles = [interpolation.slerp(z0[i : i + 1], z1[i : i + 1], alpha[i])[0] for i in range(4)]
        return interpolation.slerp(z0, z1, alpha), singles, interpolation.slerp(z0, 3.0 * z0, 0.25)

    got, singles, par = paths(z0, z1)
    for i in range(4):  # a (B,) alpha acts per example
        np.testing.assert_allclose(got[i], singles[i], atol=1e-14)
    # Parallel inputs (theta = 0): the limit of slerp is the linear path, finite (no 0/0).
    np.testing.assert_allclose(par, 0.75 * z0 + 0.25 * 3.0 * z0, atol=1e-12)
    with pytest.raises(ValueError, match="alpha must be"):
        interpolation.slerp(z0, z1, jnp.ones(3))
    with pytest.raises(ValueError, match="same batch-first shape"):
        interpolation.slerp(z0, z1[:, :3], 0.5)


# --------------------------------------------------------------------------- DDPM interpolation
# Data N(0, I): q(x_t) = N(0, I) for all t, the exact eps is sqrt(1 - abar_t) x_t, and with
# var_type='fixed_large' the DDPM step N(sqrt(alpha_t) x_t, beta_t) IS the true q(x_{t-1} | x_t).
# So, given the interpolated start x-bar_t, the decoded x_0 ~ N(sqrt(abar_t) x-bar_t,
# (abar_0 - abar_t) I) (the last step adds no noise, hence abar_0 rather than 1).


def _standard_normal_eps(s):
    mix = oracles.GaussianMixture([1.0], [[0.0, 0.0]], [1.0], s)
    return mix.eps


def test_ddpm_interpolate_moments_on_gaussian_data(x64):
    s = schedules.linear(1000)
    t, B = 300, 4000
    x0a = jnp.full((B, 2), 2.0)
    x0b = jnp.full((B, 2), -2.0)
    lambdas = jnp.array([0.0, 0.25, 0.5, 1.0])
    out = jax.jit(
        lambda k: interpolation.ddpm_interpolate(
            _standard_normal_eps(s), s, k, x0a, x0b, t=t, lambdas=lambdas, var_type="fixed_large"
        )
    )(jax.random.key(0))
    assert out.shape == (4, B, 2)
    abar, abar0 = float(s.alphas_cumprod[t]), float(s.alphas_cumprod[0])
    for i, lam in enumerate(np.asarray(lambdas)):
        mean = abar * ((1 - lam) * 2.0 + lam * -2.0)
        var = abar * (1 - abar) * ((1 - lam) ** 2 + lam**2) + abar0 - abar
        x = np.asarray(out[i]).ravel()  # 8000 independent N(mean, var) draws
        n = x.size
        # 4 standard errors (two-sided p ~ 6e-5 per check, 8 checks): mean SE sqrt(var/n),
        # variance SE var * sqrt(2/(n-1)).
        assert abs(x.mean() - mean) < 4 * np.sqrt(var / n)
        assert abs(x.var(ddof=1) - var) < 4 * var * np.sqrt(2 / (n - 1))


def test_ddpm_interpolate_shares_the_reverse_noise(x64):
    # The decoder is linear in x-bar_t with noise shared across lambda, so out(lambda) is affine
    # in lambda: out(1/2) = (out(0) + out(1)) / 2 up to round-off.
    s = schedules.linear(1000)
    eps = _standard_normal_eps(s)
    x0a, x0b = _pair(np.random.default_rng(2), (64, 2))

    @jax.jit
    def paths(key, other_key):
        interp = lambda k, lam: interpolation.ddpm_interpolate(  # noqa: E731
            eps, s, k, x0a, x0b, t=500, lambdas=jnp.array(lam), var_type="fixed_large"
        )
        k_a, _, k_dec = jax.random.split(key, 3)
        xt_a = jnp.sqrt(s.alphas_cumprod[500]) * x0a + jnp.sqrt(1 - s.alphas_cumprod[500]) * jax.random.normal(
            k_a, x0a.shape
        )
        ref = samplers.ddpm(eps, s, k_dec, x0a.shape, x_init=xt_a, var_type="fixed_large", timesteps=np.arange(501))
        return interp(key, [0.0, 0.5, 1.0]), ref, interp(other_key, [0.5])

    out, ref, other = paths(jax.random.key(3), jax.random.key(4))
    np.testing.assert_allclose(out[1], 0.5 * (out[0] + out[2]), atol=1e-10)
    # lambda = 0 is the ancestral sampler run from t with the same keys (two code paths).
    np.testing.assert_allclose(out[0], ref, atol=1e-10)
    # Negative control: decoding lambda = 1/2 with independent noise breaks the affine identity.
    assert float(jnp.max(jnp.abs(other[0] - 0.5 * (out[0] + out[2])))) > 0.1


def test_ddpm_interpolate_rejects_bad_t():
    s = schedules.linear(10, 1e-4, 0.02)
    x = jnp.zeros((2, 2))
    eps = _standard_normal_eps(s)
    for t in (-1, 10, 2.5):
        with pytest.raises(ValueError, match="t must be an int"):
            interpolation.ddpm_interpolate(eps, s, jax.random.key(0), x, x, t=t, lambdas=[0.5])
    with pytest.raises(ValueError, match="lambdas"):
        interpolation.ddpm_interpolate(eps, s, jax.random.key(0), x, x, t=3, lambdas=0.5)


# --------------------------------------------------------------------------- DDIM inversion


@pytest.mark.parametrize(
    "schedule,num_steps,mean_type", [("linear", 7, "eps"), ("cosine", 1, "v"), ("quadratic", 13, "x0")]
)
def test_ddim_encode_decode_exact_for_constant_eps(x64, schedule, num_steps, mean_type):
    # With an eps model that ignores (x, t), every DDIM step keeps x = sqrt(abar) x0 + sqrt(1 - abar) c,
    # so the latent is known in closed form and encode -> decode is the identity, for any K.
    # The same model is also expressed as an x0- or v-prediction (converted at the model's t).
    s = schedules.get(schedule, 100)
    x0a, x0b = _pair(np.random.default_rng(5), (8, 3))
    c = np.linspace(-1.0, 1.0, 3)
    to_output = {"eps": lambda s, x, t, e: e, "v": diffusion.eps_to_v, "x0": diffusion.eps_to_x0}[mean_type]
    model_fn = lambda x, t: to_output(s, x, t, jnp.broadcast_to(jnp.asarray(c, x.dtype), x.shape))  # noqa: E731
    lambdas = [0.0, 0.3, 1.0]
    kw = dict(num_steps=num_steps, mean_type=mean_type)

    @jax.jit
    def paths(x0a, x0b):
        z, traj = interpolation.ddim_encode(model_fn, s, x0a, return_trajectory=True, **kw)
        dec = samplers.ddim(model_fn, s, jax.random.key(0), x0a.shape, x_init=z, **kw)
        out = interpolation.ddim_interpolate(model_fn, s, x0a, x0b, lambdas=jnp.array(lambdas), **kw)
        zb = interpolation.ddim_encode(model_fn, s, x0b, **kw)
        return z, traj, dec, out, [interpolation.slerp(z, zb, lam) for lam in lambdas]

    z, traj, dec, out, slerped = paths(x0a, x0b)
    ts = schedules.space_timesteps(100, num_steps)
    abar = np.asarray(s.alphas_cumprod)[ts]
    # Closed forms in float64: 1e-12 absolute on O(1) values is round-off with a margin of ~1e3.
    np.testing.assert_allclose(z, np.sqrt(abar[-1]) * x0a + np.sqrt(1 - abar[-1]) * c, atol=1e-12)
    assert traj.shape == (num_steps + 1, 8, 3)
    np.testing.assert_allclose(traj[1], np.sqrt(abar[0]) * x0a + np.sqrt(1 - abar[0]) * c, atol=1e-12)
    np.testing.assert_allclose(dec, x0a, atol=1e-12)
    # ddim_interpolate decodes slerp of the latents: (slerp(z_a, z_b) - sqrt(1 - abar) c) / sqrt(abar).
    for i in range(len(lambdas)):
        expected = (slerped[i] - np.sqrt(1 - abar[-1]) * c) / np.sqrt(abar[-1])
        np.testing.assert_allclose(out[i], expected, atol=1e-11)
    np.testing.assert_allclose(out[0], x0a, atol=1e-11)
    np.testing.assert_allclose(out[2], x0b, atol=1e-11)


@pytest.mark.parametrize("schedule", ["linear", "cosine"])
def test_ddim_reconstruction_with_oracle_is_first_order(x64, schedule):
    s = schedules.get(schedule, 1000)
    mix = oracles.seed_mixture_1d(s)  # 0.5 N(-2, 0.5^2) + 0.5 N(2, 0.5^2)
    x0 = mix.sample(jax.random.key(0), 256)

    def rms_error(num_steps):
        @jax.jit
        def roundtrip(x):
            z = interpolation.ddim_encode(mix.eps, s, x, num_steps=num_steps)
            return samplers.ddim(mix.eps, s, jax.random.key(1), x.shape, num_steps=num_steps, x_init=z)

        err = roundtrip(x0) - x0
        return float(jnp.sqrt(jnp.mean(err**2))), float(jnp.max(jnp.abs(err)))

    (rms100, max100), (rms200, max200) = rms_error(100), rms_error(200)
    # Measured (256 points, float64): linear rms 0.0308 / 0.0155, max 0.087 / 0.044 at K = 100 / 200;
    # cosine rms 0.0270 / 0.0137, max 0.059 / 0.030. The bound: within 0.1 (2.5% of the data's
    # spread of ~4) at K = 100, and the error halves with twice the steps (the encoder and decoder
    # are each Euler steps of the probability-flow ODE): observed order log2(rms100 / rms200) ~ 0.99.
    assert max100 < 0.1 and rms100 < 0.04
    order = np.log2(rms100 / rms200)
    assert abs(order - 1.0) < 0.2, order
    assert max200 < max100
