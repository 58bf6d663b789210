"""Training objectives and guided samplers through the config builders and the loop:
NCSN (denoising score matching + annealed Langevin), the noise-aware classifier, and the
guidance options of `sampler_builders.build_sampler` (classifier-free and classifier guidance).

Equalities between the builder path and the library functions composed by hand (random networks,
no training), then two short runs through `diffax.main` with bounds on what they must reach.
"""

from __future__ import annotations

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from _compile import jit_once
from diffax import diffusion, guidance, samplers, schedules
from diffax import main as main_lib
from diffax.models import MLP, Classifier
from diffax.training import model_builders, presets, restore, sampler_builders, step, train_builders

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _config(name: str, arg: str | None = None):
    return presets.load_config(os.path.join(REPO, "configs", f"{name}.py") + (f":{arg}" if arg else ""))


def test_noisy_classifier_loss_is_cross_entropy_on_q_sample():
    """loss = mean CE(f(x_t, t), y) with (t, eps) drawn from the key as documented (rtol 1e-6), and
    accuracy = mean(argmax f = y); a batch without labels is a clear error."""
    s = schedules.linear(50)
    model = Classifier(num_classes=3, hidden=16, num_layers=1, time_conditional=True)
    x = jnp.linspace(-1, 1, 24).reshape(12, 2)
    y = jnp.arange(12, dtype=jnp.int32) % 3
    params = jit_once(model.init, jax.random.PRNGKey(0), x, jnp.zeros(12, jnp.int32))["params"]
    fn = step.noisy_classifier_loss_fn(model.apply, s)
    key = jax.random.PRNGKey(5)
    loss, metrics = fn(params, key, {"x": x, "y": y}, False)
    _, k_t, k_noise = jax.random.split(key, 3)
    t = jax.random.randint(k_t, (12,), 0, 50)
    x_t = diffusion.q_sample(s, x, t, jax.random.normal(k_noise, x.shape))
    logits = model.apply({"params": params}, x_t, t)
    np.testing.assert_allclose(loss, jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits, y)), rtol=1e-6)
    assert float(metrics["accuracy"]) == float(jnp.mean(jnp.argmax(logits, -1) == y))
    with pytest.raises(ValueError, match="needs labels"):
        fn(params, key, {"x": x}, False)


def _toy_config(**sampling):
    config = presets.base_config()
    config.data.name = "gmm2d"
    config.diffusion.num_timesteps = 30
    for k, v in sampling.items():
        config.sampling[k] = v
    return config


def _perturbed(params, scale=0.05):
    """params + scale * N(0, 1) per leaf: a network whose (zero-initialised) output layer is not zero."""
    rng = np.random.default_rng(9)  # NumPy: no compile per leaf shape (eager jax.random would compile each)
    return jax.tree.map(lambda p: p + (scale * rng.standard_normal(p.shape)).astype(np.float32), params)


@pytest.mark.slow
def test_build_sampler_classifier_free_guidance_equals_manual_composition():
    """sampling.guidance_w = w: the builder's sampler is guidance.classifier_free (labels i mod K, null K)
    under samplers.ddim (float32 rounding of two
    separately compiled programs: rtol 1e-5); w = 0 gives a different result (the guidance is applied)."""
    config = _toy_config(method="ddim", num_steps=10, guidance_w=2.0, clip_x0=1.0)
    config.model.num_classes = 3
    config.diffusion.p_uncond = 0.1  # CFG needs a trained null label
    model = model_builders.build_model(config, (2,))
    s = model_builders.build_schedule(config)
    params = model_builders.init_params(model, jax.random.PRNGKey(0), (2,))
    params = _perturbed(params)
    key = jax.random.PRNGKey(1)
    got = jax.jit(sampler_builders.build_sampler(config, model, s, (2,)), static_argnums=2)(params, key, 9)
    y = jnp.arange(9, dtype=jnp.int32) % 3
    eps_fn = lambda x_t, t, labels: model.apply({"params": params}, x_t, t, y=labels, train=False)  # noqa: E731
    want = jax.jit(lambda k: samplers.ddim(guidance.classifier_free(eps_fn, y, w=2.0, null_label=3), s, k, (9, 2),
                                           num_steps=10, clip_x0=1.0))(key)  # fmt: skip
    assert np.all(np.isfinite(np.asarray(want)))
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-5, atol=1e-6)
    config.sampling.guidance_w = 0.0
    plain = jax.jit(sampler_builders.build_sampler(config, model, s, (2,)), static_argnums=2)(params, key, 9)
    assert float(jnp.max(jnp.abs(plain - got))) > 1e-3


def test_build_sampler_classifier_guidance_equals_manual_composition():
    """sampling.classifier_scale = gamma with a (module, params) classifier: guidance.classifier with
    log f(y | x_t, t) = log_softmax(logits)_y toward labels i mod K, under ancestral DDPM (rtol 1e-5)."""
    config = _toy_config(method="ddpm", classifier_scale=1.5, clip_x0=1.0)
    model = model_builders.build_model(config, (2,))
    s = model_builders.build_schedule(config)
    params = _perturbed(model_builders.init_params(model, jax.random.PRNGKey(0), (2,)))
    clf = Classifier(num_classes=3, hidden=16, num_layers=1, time_conditional=True)
    clf_params = jit_once(clf.init, jax.random.PRNGKey(2), jnp.zeros((2, 2)), jnp.zeros(2, jnp.int32))["params"]
    key = jax.random.PRNGKey(1)
    sampler = sampler_builders.build_sampler(config, model, s, (2,), classifier=(clf, clf_params))
    got = jax.jit(sampler, static_argnums=2)(params, key, 6)
    y = jnp.arange(6, dtype=jnp.int32) % 3

    def log_prob(x_t, t, labels):
        lp = jax.nn.log_softmax(clf.apply({"params": clf_params}, x_t, t), -1)
        return lp[jnp.arange(lp.shape[0]), labels]

    eps = lambda x_t, t: model.apply({"params": params}, x_t, t, train=False)  # noqa: E731
    want = jax.jit(lambda k: samplers.ddpm(guidance.classifier(eps, log_prob, s, y, scale=1.5), s, k, (6, 2),
                                           clip_x0=1.0))(key)  # fmt: skip
    assert np.all(np.isfinite(np.asarray(want)))
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-5, atol=1e-6)


@pytest.mark.slow
def test_build_sampler_ncsn_is_annealed_langevin_from_sigma_max_noise():
    """'annealed_langevin': x_init = sigma_1 z (first half of the split key), then
    samplers.annealed_langevin with ncsn_score_fn over build_sigmas (rtol 1e-5)."""
    config = _config("ncsn_toy2d")
    config.sampling.steps_per_level = 3
    model = model_builders.build_model(config, (2,))
    params = model_builders.init_params(model, jax.random.PRNGKey(0), (2,))
    key = jax.random.PRNGKey(4)
    got = jax.jit(sampler_builders.build_sampler(config, model, None, (2,)), static_argnums=2)(params, key, 5)
    sigmas = train_builders.build_sigmas(config)
    np.testing.assert_allclose(np.asarray(sigmas)[[0, -1]], [3.0, 0.01], rtol=1e-6)

    @jax.jit
    def want(key):
        k_init, k_run = jax.random.split(key)
        score = step.ncsn_score_fn(model.apply, {"params": params})
        return samplers.annealed_langevin(score, sigmas, k_run, sigmas[0] * jax.random.normal(k_init, (5, 2)),
                                          eps=1e-4, steps_per_level=3, denoise=True)  # fmt: skip

    np.testing.assert_allclose(np.asarray(got), np.asarray(want(key)), rtol=1e-5, atol=1e-6)


@pytest.mark.slow
def test_ncsn_toy_through_main_recovers_the_mixture(tmp_path):
    """configs/ncsn_toy2d.py (gmm2d: weights 0.3/0.5/0.2), shortened to 1500 steps with a 128-wide MLP
    (the config's is 256) and 2000 samples: annealed Langevin samples match the mixture. Full config
    measured: sliced-W1 ratio 2.34, mode weights 0.259/0.509/0.232; this test's setting measured: ratio
    1.91, mode weights 0.313/0.453/0.235 (max error 0.048). Bounds: ratio < 4 and mode weights within 0.08
    (the data-vs-data baseline of 2000 points has sd ~0.011 per weight; failure means a broken score or
    sampler — an untrained network's samples sit at the sigma_max noise scale, ratio > 20)."""
    config = _config("ncsn_toy2d")
    config.training.num_steps, config.optim.decay_steps = 1500, 1500
    config.training.checkpoint_every = 1500
    config.sampling.num_samples = 2000
    config.model.hidden = 128
    main_lib.run(config, str(tmp_path), ["train", "sample", "eval"])
    result = json.loads((tmp_path / "eval.json").read_text())
    assert result["distance_ratio"] < 4.0, result
    assert result["mode_weight_max_abs_error"] < 0.08, result


@pytest.mark.slow
def test_noisy_classifier_through_main_and_classifier_eval(tmp_path):
    """configs/noisy_classifier.py (gmm2d), 600 steps: on held-out points the accuracy at t = 0 is
    > 0.97 (the components barely overlap: the Bayes accuracy is ~1.0; measured 1.0 after 2000
    steps) and at t = T-1, where x_t is almost pure noise, it is at most the largest class weight
    0.5 + 0.05 (5 sd of 2000 draws) — the classifier must not be better than the prior there.
    `--mode=sample` on a classifier run is a clear error."""
    config = _config("noisy_classifier", "gmm2d")
    config.training.num_steps, config.training.checkpoint_every = 600, 600
    main_lib.run(config, str(tmp_path), ["train", "eval"])
    acc = json.loads((tmp_path / "eval.json").read_text())["accuracy_at_t"]
    assert acc["0"] > 0.97 and acc["999"] < 0.55, acc
    assert acc["0"] >= acc["250"] >= acc["500"] - 0.02, acc  # information decays with t
    with pytest.raises(ValueError, match="no sampler"):
        main_lib.run(config, str(tmp_path), ["sample"])
    # load_run gives the classifier back for guidance, with its class count.
    clf_config, module, _, restored_step = restore.load_run(str(tmp_path))
    assert clf_config.training.objective == "noisy_classifier" and module.num_classes == 3 and restored_step == 600
    assert isinstance(module, Classifier) and not isinstance(module, MLP)


@pytest.mark.slow
@pytest.mark.parametrize("mean_type", ["x0", "v"])
def test_build_sampler_classifier_guidance_passes_mean_type(mean_type):
    """For an x0- or v-model the builder's guided sampler is guidance.classifier(..., mean_type=mean_type)
    under DDIM (rtol 1e-5), and differs from guidance that treats the output as eps (the old defect)."""
    config = _toy_config(method="ddim", num_steps=10, classifier_scale=2.0, clip_x0=1.0)
    config.diffusion.mean_type = mean_type
    model = model_builders.build_model(config, (2,))
    s = model_builders.build_schedule(config)
    params = _perturbed(model_builders.init_params(model, jax.random.PRNGKey(0), (2,)))
    clf = Classifier(num_classes=3, hidden=16, num_layers=1, time_conditional=True)
    clf_params = jit_once(clf.init, jax.random.PRNGKey(2), jnp.zeros((2, 2)), jnp.zeros(2, jnp.int32))["params"]
    clf_params = _perturbed(clf_params, 0.5)
    key = jax.random.PRNGKey(1)
    got = jax.jit(sampler_builders.build_sampler(config, model, s, (2,), classifier=(clf, clf_params)), static_argnums=2)(
        params, key, 6)
    y = jnp.arange(6, dtype=jnp.int32) % 3

    def log_prob(x_t, t, labels):
        lp = jax.nn.log_softmax(clf.apply({"params": clf_params}, x_t, t), -1)
        return lp[jnp.arange(lp.shape[0]), labels]

    out = lambda x_t, t: model.apply({"params": params}, x_t, t, train=False)  # noqa: E731

    def run(guide_as):
        fn = guidance.classifier(out, log_prob, s, y, scale=2.0, mean_type=guide_as)
        return jax.jit(lambda k: samplers.ddim(fn, s, k, (6, 2), num_steps=10, clip_x0=1.0, mean_type=mean_type))(key)

    np.testing.assert_allclose(np.asarray(got), np.asarray(run(mean_type)), rtol=1e-5, atol=1e-6)
    assert float(jnp.max(jnp.abs(got - run("eps")))) > 1e-3


@pytest.mark.slow
@pytest.mark.parametrize("method", ["ddpm", "ddim"])
def test_build_sampler_respacing_honours_spacing(method):
    """sampling.num_steps < T respaces with sampling.spacing for both methods: the builder's sampler equals
    the sampler given space_timesteps(T, N, spacing) by hand to float32 rounding of the computation's scale
    (|diff| <= 1e-6 max|x|, ~8 ulp: the perturbed network's 6 unclipped steps reach |x| ~ 1e3-1e4, and entries
    near 0 are cancellations of such values, so their error is set by that scale, not by their own size).
    Controls: timesteps off by one (ts + 1) move the samples by > 10x the tolerance; 'leading' != 'trailing'."""
    outs = {}
    for spacing in ("leading", "trailing"):
        config = _toy_config(method=method, num_steps=6, spacing=spacing)
        model = model_builders.build_model(config, (2,))
        s = model_builders.build_schedule(config)
        params = _perturbed(model_builders.init_params(model, jax.random.PRNGKey(0), (2,)))
        key = jax.random.PRNGKey(3)
        got = np.asarray(jax.jit(sampler_builders.build_sampler(config, model, s, (2,)), static_argnums=2)(params, key, 5))
        eps = lambda x_t, t: model.apply({"params": params}, x_t, t, train=False)  # noqa: E731
        sampler = samplers.ddpm if method == "ddpm" else samplers.ddim
        def manual(ts):  # timesteps are resolved before tracing
            return np.asarray(jax.jit(lambda k: sampler(eps, s, k, (5, 2), timesteps=ts))(key))

        ts = schedules.space_timesteps(30, 6, spacing)
        want = manual(ts)
        tol = 1e-6 * float(np.max(np.abs(want)))
        np.testing.assert_allclose(got, want, rtol=0, atol=tol)
        if spacing == "leading":  # 0, 5, ..., 25 -> 1, 6, ..., 26
            assert np.max(np.abs(manual(np.asarray(ts) + 1) - want)) > 10 * tol
        outs[spacing] = got
    assert np.max(np.abs(outs["leading"] - outs["trailing"])) > 1e-3


def test_build_schedule_scales_linear_betas_and_refuses_a_noisy_terminal():
    """diffusion.beta_start/beta_end None: 1e-4 and 0.02 scaled by 1000/T (exact); alpha-bar_(T-1) above
    diffusion.max_terminal_alpha_bar is refused naming the value (DDPM's unscaled betas at T = 100 end at
    alpha-bar 0.36), unless allowed."""
    config = _toy_config()
    config.diffusion.num_timesteps = 100
    s = model_builders.build_schedule(config)
    np.testing.assert_allclose(np.asarray(s.betas), np.linspace(1e-3, 0.2, 100), rtol=1e-6)
    assert float(s.alphas_cumprod[-1]) < 1e-3
    config.diffusion.beta_start, config.diffusion.beta_end = 1e-4, 0.02
    with pytest.raises(ValueError, match=r"alpha-bar_\(T-1\) = 0\.36.*max_terminal_alpha_bar"):
        model_builders.build_schedule(config)
    config.diffusion.max_terminal_alpha_bar = 1.0
    np.testing.assert_allclose(np.asarray(model_builders.build_schedule(config).betas), np.linspace(1e-4, 0.02, 100),
                               rtol=1e-6)  # fmt: skip
    config.diffusion.beta_end = None
    with pytest.raises(ValueError, match="set both diffusion.beta_start and diffusion.beta_end"):
        model_builders.build_schedule(config)


@pytest.mark.parametrize("field, value, message", [
    ("clip_x0", 0.0, "sampling.clip_x0 must be None .* got 0.0"),
    ("clip_x0", -1.0, "sampling.clip_x0 must be None .* got -1.0"),
    ("guidance_w", 1.0, "p_uncond=0.0 its null label was never trained"),
    ("spacing", "even", r"unknown sampling.spacing 'even'; allowed: \['leading', 'linspace', 'trailing'\]"),
])
def test_build_sampler_refuses_settings_that_give_bad_samples(field, value, message):
    config = _toy_config(method="ddim", num_steps=10)
    config.model.num_classes = 3
    config.sampling[field] = value
    model = model_builders.build_model(config, (2,))
    with pytest.raises(ValueError, match=message):
        sampler_builders.build_sampler(config, model, model_builders.build_schedule(config), (2,))
