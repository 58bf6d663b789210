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


def _as_output(s, mean_type: str, eps_fn):
    """The model of parameterisation `mean_type` whose implied eps is `eps_fn`'s: eps, x0 or v.

    x0 = (x_t - b_t eps) / a_t and v = (eps - b_t x_t) / a_t (a_t = sqrt(abar_t), b_t = sqrt(1 - abar_t)),
    written out here rather than through `diffusion`'s conversions, which `guidance` itself uses.
    """

    def out_fn(x, t, *args):
        eps = eps_fn(x, t, *args)
        if mean_type == "eps":
            return eps
        abar = jnp.take(s.alphas_cumprod, t)[:, None]
        a, b = jnp.sqrt(abar), jnp.sqrt(1.0 - abar)
        return (x - b * eps) / a if mean_type == "x0" else (eps - b * x) / a

    return out_fn


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


@pytest.mark.parametrize("mean_type", ["x0", "v"])
def test_classifier_guidance_at_scale_1_is_the_exact_conditional_output(x64, mean_type):
    """An x0- or v-model of the oracle guided by the exact q(y | x_t) at scale 1 outputs the exact
    conditional model's x0 or v (Bayes in eps, mapped through the affine conversions)."""
    s = schedules.cosine(1000)
    mix = _ring_mixture(s, radius=1.5, std=0.6)
    _, log_f = _oracle_fns(mix)
    x, t, y = _random_inputs(s)
    model = _as_output(s, mean_type, mix.eps)
    exact = _as_output(s, mean_type, mix.eps_given_class)

    @jax.jit
    def paths(x, t, y):
        guided = guidance.classifier(model, log_f, s, y, scale=1.0, mean_type=mean_type)(x, t)
        as_eps = guidance.classifier(model, log_f, s, y, scale=1.0, mean_type="eps")(x, t)
        return guided, as_eps, exact(x, t, y), model(x, t)

    guided, as_eps, want, uncond = paths(x, t, y)
    # float64: the eps <-> x0 / v conversions divide by a_t or b_t >= sqrt(beta_0) ~ 6e-3 on this
    # schedule, so round-off stays below ~1e-13; 1e-9 is loose but catches any formula error.
    np.testing.assert_allclose(guided, want, atol=1e-9, rtol=0)
    # Negative controls: the unguided output is far from the conditional one, and so is the
    # output shifted as if it were eps (the pre-fix behaviour).
    assert float(jnp.max(jnp.abs(uncond - want))) > 0.1
    assert float(jnp.max(jnp.abs(as_eps - want))) > 0.1


@pytest.mark.parametrize("mean_type", ["x0", "v"])
def test_classifier_free_on_x0_and_v_outputs_equals_cfg_on_eps(x64, mean_type):
    """CFG applied to x0 (or v) outputs, converted to eps, equals CFG applied to the eps outputs:
    the weights (1 + w, -w) sum to 1 and the conversion is affine at fixed (x_t, t). With exact
    ingredients both equal classifier guidance at scale 1 + w in that parameterisation."""
    s = schedules.linear(1000)
    mix = _ring_mixture(s, radius=1.5, std=0.6)
    eps_cond, log_f = _oracle_fns(mix)
    x, t, y = _random_inputs(s)
    out_cond = _as_output(s, mean_type, eps_cond)
    to_eps = {"x0": diffusion.x0_to_eps, "v": diffusion.v_to_eps}[mean_type]

    @jax.jit
    def paths(x, t, y):
        res = []
        for w in (0.5, 3.0):
            cfg_out = guidance.classifier_free(out_cond, y, w=w, null_label=K)(x, t)
            cfg_eps = guidance.classifier_free(eps_cond, y, w=w, null_label=K)(x, t)
            cls_out = guidance.classifier(_as_output(s, mean_type, mix.eps), log_f, s, y, scale=1.0 + w,
                                          mean_type=mean_type)(x, t)
            res.append((to_eps(s, x, t, cfg_out), cfg_eps, cfg_out, cls_out))
        return res

    for cfg_out_as_eps, cfg_eps, cfg_out, cls_out in paths(x, t, y):
        # Algebraically equal float64 paths; conversions divide by b_t >= 0.01: round-off < 1e-12.
        np.testing.assert_allclose(cfg_out_as_eps, cfg_eps, atol=1e-10, rtol=0)
        np.testing.assert_allclose(cfg_out, cls_out, atol=1e-9, rtol=0)


def test_classifier_rejects_unknown_mean_type():
    s = schedules.linear(1000)
    mix = _ring_mixture(s, radius=1.5, std=0.6)
    _, log_f = _oracle_fns(mix)
    with pytest.raises(ValueError, match=r"mean_type 'score'.*\['eps', 'x0', 'v'\]"):
        guidance.classifier(mix.eps, log_f, s, 0, scale=1.0, mean_type="score")


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


def _fraction_in_class(x, mix, y) -> float:
    """The fraction of samples whose nearest component mean is their requested class y."""
    nearest = jnp.argmin(jnp.sum((x[:, None] - mix.means) ** 2, -1), -1)
    return float(jnp.mean(nearest == y))


@pytest.mark.parametrize("sampler", ["ddpm", "ddim"])
def test_exact_guidance_samples_land_in_the_requested_class(sampler):
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
    def runs(key):
        return (
            sample(guidance.classifier(mix.eps, log_f, s, y, scale=1.0), key),
            sample(guidance.classifier_free(eps_cond, y, w=0.0, null_label=K), key),
            sample(guidance.classifier(mix.eps, log_f, s, y, scale=0.0), key),
        )

    cls, cfg, unguided = runs(jax.random.key(1))
    for x in (cls, cfg):
        # Exact conditional eps: the samples are the component's (mass outside its Voronoi cell
        # < 1e-10); measured 100%. The bound 99% leaves room for the sampler's discretization.
        assert _fraction_in_class(x, mix, y) >= 0.99
    # Negative control (independent of the assertion above): the same sampler and key without
    # guidance draws the unconditional mixture, which lands in the requested class only ~1/K of
    # the time (binomial s.e. 0.02 at B = 600), far below the 99% bound.
    assert _fraction_in_class(unguided, mix, y) < 0.5


@pytest.mark.parametrize("mean_type", ["eps", "x0", "v"])
@pytest.mark.parametrize("sampler", ["ddpm", "ddim"])
def test_classifier_guidance_scale_3_in_each_parameterisation(sampler, mean_type):
    """eps-, x0- and v-models of the exact oracle, guided at scale 3 by the exact q(y | x_t), put
    >= 99% of samples in the requested component (measured 100% for all six).

    Negative control: an x0-model guided as if its output were eps (mean_type='eps', the pre-fix
    behaviour) pushes x0 against the gradient and must miss that bound. (A v-model guided as eps is
    also wrong, but only by the factor a_t = sqrt(abar_t) on the shift, i.e. an effective scale
    3 a_t, which on these well-separated classes still lands >= 99%; its output error is asserted
    in `test_classifier_guidance_at_scale_1_is_the_exact_conditional_output` instead.)"""
    s = schedules.linear(1000)
    mix = _ring_mixture(s, radius=3.0, std=0.3)
    _, log_f = _oracle_fns(mix)
    B = 600
    y = jnp.arange(B) % K
    model = _as_output(s, mean_type, mix.eps)

    def sample(guided_as: str, key):
        model_fn = guidance.classifier(model, log_f, s, y, scale=3.0, mean_type=guided_as)
        if sampler == "ddpm":
            return samplers.ddpm(model_fn, s, key, (B, 2), timesteps=np.arange(0, 1000, 5), mean_type=mean_type)
        return samplers.ddim(model_fn, s, key, (B, 2), num_steps=50, mean_type=mean_type)

    key = jax.random.key(2)
    x = jax.jit(lambda k: sample(mean_type, k))(key)
    assert _fraction_in_class(x, mix, y) >= 0.99
    if mean_type == "x0":
        wrong = jax.jit(lambda k: sample("eps", k))(key)
        assert _fraction_in_class(wrong, mix, y) < 0.99


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
    s = schedules.linear(10, 1e-4, 0.02)
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
    x, _, _ = _random_inputs(schedules.linear(10, 1e-4, 0.02), 32)
    got = mix.class_log_probs(x)
    expected = jax.jit(lambda x: jnp.stack(  # one compile instead of ~100 eager float64 ops
        [jnp.log(mix.weights[k]) + mix.component(k).log_prob(x) - mix.log_prob(x) for k in range(3)], -1
    ))(x)
    np.testing.assert_allclose(got, expected, atol=1e-12)
