"""Tests for diffax.guidance against the Gaussian-mixture oracle.

A mixture whose components are the classes has exact conditional eps (`eps_given_class`), exact
noisy-classifier log-probabilities (`class_log_probs_t`) and an exact clean classifier
(`class_log_probs`), so guidance is checked with no trained network in the loop.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffax import diffusion, guidance, oracles, samplers, schedules

K = 3  # classes = mixture components; the null label of classifier-free guidance is K


def _ring_mixture(s, radius: float, std: float) -> oracles.GaussianMixture:
    """K equal-weight isotropic components on a circle (well separated for radius >> std)."""
    ang = 2 * np.pi * np.arange(K) / K
    means = radius * np.stack([np.cos(ang), np.sin(ang)], -1)
    return oracles.GaussianMixture(np.ones(K), means, np.full(K, std), s)


def _oracle_fns(mix):
    """(conditional eps with null label K = unconditional eps, exact noisy log f(y | x_t, t))."""

    def eps_cond(x, t, y):
        cond = mix.eps_given_class(x, t, jnp.clip(y, 0, K - 1))
        return jnp.where((y == K)[:, None], mix.eps(x, t), cond)

    def log_f(x, t, y):
        return jnp.take_along_axis(mix.class_log_probs_t(x, t), y[:, None], axis=-1)[:, 0]

    return eps_cond, log_f


def _random_inputs(s, n=64):
    """Points x ~ N(0, 4 I), times and labels uniform (NumPy: no compiles), in the schedule's dtype."""
    rng = np.random.default_rng(0)
    x = jnp.asarray(2.0 * rng.standard_normal((n, 2)), dtype=s.betas.dtype)
    t = jnp.asarray(rng.integers(0, s.num_timesteps, n), dtype=jnp.int32)
    y = jnp.asarray(rng.integers(0, K, n), dtype=jnp.int32)
    return x, t, y


# --------------------------------------------------------------------------- exact ingredients


@pytest.mark.parametrize("schedule", ["linear", "cosine"])
def test_exact_ingredients_give_exact_conditional_eps(x64, schedule):
    s = schedules.get(schedule, 1000)
    mix = _ring_mixture(s, radius=1.5, std=0.6)
    eps_cond, log_f = _oracle_fns(mix)
    x, t, y = _random_inputs(s)

    @jax.jit  # one compile for all the paths below
    def paths(x, t, y):
        exact = mix.eps_given_class(x, t, y)
        cls = guidance.classifier(mix.eps, log_f, s, y, scale=1.0)(x, t)
        cfg = guidance.classifier_free(eps_cond, y, w=0.0, null_label=K)(x, t)
        cfg_w = [guidance.classifier_free(eps_cond, y, w=w, null_label=K)(x, t) for w in (0.5, 2.0)]
        cls_w = [guidance.classifier(mix.eps, log_f, s, y, scale=1.0 + w)(x, t) for w in (0.5, 2.0)]
        uncond = guidance.classifier(mix.eps, log_f, s, y, scale=0.0)(x, t)
        return exact, cls, cfg, cfg_w, cls_w, uncond

    exact, cls, cfg, cfg_w, cls_w, uncond = paths(x, t, y)
    # Bayes: grad log q(x|y) = grad log q(x) + grad log q(y|x); in float64 the two paths agree to
    # round-off (measured ~2e-15), so 1e-10 is a loose bound that still catches any formula error.
    np.testing.assert_allclose(cls, exact, atol=1e-10, rtol=0)
    np.testing.assert_allclose(cfg, exact, atol=1e-10, rtol=0)
    # CFG at weight w is classifier guidance at scale 1 + w (the seeds' gamma) when both are exact.
    for a, b in zip(cfg_w, cls_w):
        np.testing.assert_allclose(a, b, atol=1e-10, rtol=0)
    # Negative control: without guidance (scale 0) the eps is the unconditional one, far from exact.
    assert float(jnp.max(jnp.abs(uncond - exact))) > 0.1


def test_classifier_free_is_one_batched_call():
    s = schedules.linear(100)
    mix = _ring_mixture(s, radius=1.5, std=0.6)
    eps_cond, _ = _oracle_fns(mix)
    seen = []

    def counting_eps(x, t, y):
        seen.append((x.shape[0], t.shape[0], y.shape[0]))
        return eps_cond(x, t, y)

    B = 8
    y = jnp.arange(B) % K
    model_fn = guidance.classifier_free(counting_eps, y, w=1.5, null_label=K)
    x, t, _ = _random_inputs(s, B)
    jax.make_jaxpr(model_fn)(x, t)  # tracing is enough to count calls (no compile)
    assert seen == [(2 * B, 2 * B, 2 * B)]  # one call per evaluation, on the doubled batch
    # Inside a sampler: the scan body is traced once; every trace makes exactly one 2B-sized call.
    seen.clear()
    jax.make_jaxpr(lambda k: samplers.ddpm(model_fn, s, k, (B, 2)))(jax.random.key(0))
    assert len(seen) >= 1 and all(b == (2 * B, 2 * B, 2 * B) for b in seen)


def test_learned_variance_only_eps_half_is_guided(x64):
    s = schedules.linear(1000)
    mix = _ring_mixture(s, radius=1.5, std=0.6)
    eps_cond, log_f = _oracle_fns(mix)
    x, t, y = _random_inputs(s)

    def var_part(x, t, y):  # a label-dependent stand-in for a learned-variance half
        return jnp.tanh(x) * (1.0 + y[:, None]) + t[:, None] / 1000.0

    def eps_cond_lv(x, t, y):
        return jnp.concatenate([eps_cond(x, t, y), var_part(x, t, y)], axis=-1)

    def eps_lv(x, t):
        return jnp.concatenate([mix.eps(x, t), var_part(x, t, jnp.full(t.shape, K))], axis=-1)

    @jax.jit
    def paths(x, t, y):
        return (
            guidance.classifier_free(eps_cond_lv, y, w=2.0, null_label=K)(x, t),
            guidance.classifier_free(eps_cond, y, w=2.0, null_label=K)(x, t),
            guidance.classifier(eps_lv, log_f, s, y, scale=3.0)(x, t),
            guidance.classifier(mix.eps, log_f, s, y, scale=3.0)(x, t),
            var_part(x, t, y),
            var_part(x, t, jnp.full(t.shape, K)),
        )

    cfg, cfg_ref, cls, cls_ref, var_cond, var_null = paths(x, t, y)
    # Same ops on the eps half in both paths (one jit): equal within 1e-12 in float64.
    np.testing.assert_allclose(cfg[:, :2], cfg_ref, atol=1e-12, rtol=0)
    np.testing.assert_array_equal(cfg[:, 2:], var_cond)  # the conditional branch's variance, untouched
    np.testing.assert_allclose(cls[:, :2], cls_ref, atol=1e-12, rtol=0)
    np.testing.assert_array_equal(cls[:, 2:], var_null)


# --------------------------------------------------------------------------- from_score


@pytest.mark.parametrize("var_type", ["fixed_small", "fixed_large"])
def test_ddpm_from_score_matches_eps_path(var_type):
    s = schedules.linear(200, beta_start=5e-4, beta_end=0.1)
    mix = oracles.anisotropic_mixture_2d(s)
    key = jax.random.key(7)
    run = lambda fn: samplers.ddpm(fn, s, key, (256, 2), var_type=var_type)  # noqa: E731
    from_score, from_eps = jax.jit(lambda: (run(guidance.from_score(mix.score, s)), run(mix.eps)))()
    # Same key, same arithmetic (eps = -sqrt(1 - abar) score on both paths): equal within 1e-6.
    np.testing.assert_allclose(from_score, from_eps, atol=1e-6, rtol=0)


@pytest.mark.parametrize("schedule", ["linear", "cosine", "quadratic"])
def test_p_mean_from_score_is_denoising_score_step(x64, schedule):
    s = schedules.get(schedule, 1000)
    mix = oracles.anisotropic_mixture_2d(s)
    x, t, _ = _random_inputs(s)

    @jax.jit
    def paths(x, t):
        out = guidance.from_score(mix.score, s)(x, t)
        mean = diffusion.p_mean_variance(s, out, x, t, mean_type="eps")["mean"]
        beta = diffusion.extract(s.betas, t, 2)
        alpha = diffusion.extract(s.alphas, t, 2)
        return mean, (x + beta * mix.score(x, t)) / jnp.sqrt(alpha)  # mu = (x_t + beta_t s) / sqrt(alpha_t)

    mean, expected = paths(x, t)
    # Two algebraically equal float64 formulas; the posterior-mean path divides by 1 - abar_t, so
    # round-off grows like 1/(1 - abar_0) ~ 1e4 times eps_64: 1e-9 is ample and still strict.
    np.testing.assert_allclose(mean, expected, atol=1e-9, rtol=0)


# --------------------------------------------------------------------------- sampling


@pytest.mark.parametrize("sampler", ["ddpm", "ddim"])
def test_guided_sampling_recovers_the_class(sampler):
    s = schedules.linear(1000)
    mix = _ring_mixture(s, radius=3.0, std=0.3)  # component distance 5.2 = 17 std: well separated
    eps_cond, log_f = _oracle_fns(mix)
    B = 600
    y = jnp.arange(B) % K  # a different class per example

    def sample(model_fn, key):
        if sampler == "ddpm":
            return samplers.ddpm(model_fn, s, key, (B, 2))
        return samplers.ddim(model_fn, s, key, (B, 2), num_steps=50)

    @jax.jit
    def both(key):
        return (
            sample(guidance.classifier(mix.eps, log_f, s, y, scale=1.0), key),
            sample(guidance.classifier_free(eps_cond, y, w=0.0, null_label=K), key),
        )

    for x in both(jax.random.key(1)):
        nearest = jnp.argmin(jnp.sum((x[:, None] - mix.means) ** 2, -1), -1)
        # Exact conditional eps: the samples are the component's (mass outside its Voronoi cell
        # < 1e-10); measured 100%. The bound 99% leaves room for the sampler's discretization.
        assert float(jnp.mean(nearest == y)) >= 0.99
        # Negative control: labels shifted by one class are (almost) never the nearest component.
        assert float(jnp.mean(nearest == (y + 1) % K)) <= 0.01


def test_guidance_strength_raises_class_log_prob():
    s = schedules.linear(1000)
    mix = _ring_mixture(s, radius=1.0, std=0.7)  # overlapping: p(y | x) is far from 0/1 on the data
    eps_cond, log_f = _oracle_fns(mix)
    B, y0 = 1000, 1
    y = jnp.full((B,), y0)
    key = jax.random.key(3)  # common random numbers across strengths

    @jax.jit
    def mean_log_p(gamma, w):
        x_cls = samplers.ddpm(guidance.classifier(mix.eps, log_f, s, y, scale=gamma), s, key, (B, 2))
        x_cfg = samplers.ddpm(guidance.classifier_free(eps_cond, y, w=w, null_label=K), s, key, (B, 2))
        return tuple(jnp.mean(mix.class_log_probs(x)[:, y0]) for x in (x_cls, x_cfg))

    strengths = (0.0, 1.0, 3.0)
    cls, cfg = zip(*[[float(v) for v in mean_log_p(g, g)] for g in strengths])
    # Measured (this configuration: B = 1000, DDPM-1000, float32, key 3): mean log p(y | x_0) for
    # classifier gamma = 0 / 1 / 3: -2.42 / -0.444 / -0.054 (standard errors 0.073 / 0.023 / 0.0026);
    # CFG w = 0 / 1 / 3: -0.444 / -0.110 / -0.035 (s.e. 0.023 / 0.0057 / 0.0017). Every increase
    # is > 10 standard errors of either mean, so strict monotonicity is not a sampling accident.
    assert cls[0] < cls[1] < cls[2]
    assert cfg[0] < cfg[1] < cfg[2]
    # gamma = 0 samples the unconditional mixture, where class y0 is a minority (mean log p(y0|x)
    # below log 1/2); CFG at w = 0 and classifier guidance at gamma = 1 are both the exact
    # conditional, run with the same key: equal up to float32 round-off (measured: identical),
    # bound 1e-3 absolute on a mean of -0.44.
    assert cls[0] < np.log(0.5)
    assert abs(cfg[0] - cls[1]) < 1e-3


# --------------------------------------------------------------------------- validation


def test_bad_inputs_raise():
    s = schedules.linear(10)
    mix = _ring_mixture(s, radius=1.0, std=0.5)
    eps_cond, log_f = _oracle_fns(mix)
    with pytest.raises(ValueError, match="w must be"):
        guidance.classifier_free(eps_cond, 0, w="strong", null_label=K)
    with pytest.raises(ValueError, match="scale must be"):
        guidance.classifier(mix.eps, log_f, s, 0, scale=jnp.ones(3))
    with pytest.raises(ValueError, match="scale must be"):
        guidance.classifier(mix.eps, log_f, s, 0, scale=float("nan"))
    with pytest.raises(ValueError, match="y must be"):
        guidance.classifier_free(eps_cond, jnp.zeros((2, 2), int), w=1.0, null_label=K)
    x, t, y = _random_inputs(s, 4)
    bad = guidance.classifier(lambda x, t: jnp.zeros((4, 3)), log_f, s, y, scale=1.0)
    with pytest.raises(ValueError, match="model output has shape"):
        jax.make_jaxpr(bad)(x, t)


def test_clean_class_log_probs_is_bayes(x64):
    # The exact classifier used above: log p(y=k | x) = log w_k + log N_k(x) - log p(x).
    mix = oracles.anisotropic_mixture_2d()
    x, _, _ = _random_inputs(schedules.linear(10), 32)
    got = mix.class_log_probs(x)
    expected = jnp.stack(
        [jnp.log(mix.weights[k]) + mix.component(k).log_prob(x) - mix.log_prob(x) for k in range(3)], -1
    )
    np.testing.assert_allclose(got, expected, atol=1e-12)
