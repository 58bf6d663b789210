"""Continuous-time denoising score matching (`diffax.score_sde`, training.objective 'score_sde'; issue 22 item 3).

Library: the loss at the exact score of Gaussian data against its closed-form minimum; its gradient in a score
scale vanishing there; the network parameterisations against the Gaussian-mixture oracle; the EDM denoiser of a
score against the oracle's exact EDM denoiser (x64); the sigma <-> t map against EDM's closed-form VP inverse;
the predictor-corrector sampler's output moments on Gaussian data. Config layer: the run check, the sample
fingerprint and the errors of `builders.build`. Through `python -m diffax.main` (slow): toy2d ':vp_sde' /
':ve_sde' reach the DDPM toy config's sliced W1 within 1.5x at equal steps, a resumed run is bitwise the straight
one, and a run resumed or sampled with another sde.process is refused.

Measured (2-core CPU, the commands of tests/test_continuous_time_cli.py: swiss_roll, 300 steps, 2000 samples,
eval.json's distance_ratio):
    DDPM (ancestral, 1000 steps) 1.68;  :vp_sde ('ode', rtol 1e-3) 1.94;  :ve_sde ('pc', predictor only, 1000 steps) 1.89
    the :ve_sde run sampled by 'ode' 1.77, by 'edm' (18 steps, 35 NFE) 2.52 (35 steps: 2.47)
    the :vp_sde run sampled by 'edm' (18 steps) 2.12, with 3 steps 143
    the same commands with --config.seed=1 / 2 (other data, init and samples): DDPM 2.10 / 2.25, :vp_sde 2.68 /
    2.12, :ve_sde 0.99 / 1.75 (the ratio moves by ~0.5 between seeds; the bound is checked at seed 0)
"""

from __future__ import annotations

import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffax import edm, oracles, processes, score_sde
from diffax.training import builders, presets, restore

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MU, SD = 0.3, 0.7  # Gaussian data N(MU, SD^2 I)


def _gaussian_score(p):
    """The exact score of x_t for x_0 ~ N(MU, SD^2 I): -(x - alpha MU) / (alpha^2 SD^2 + sigma^2)."""

    def score_fn(x, t):
        a, s = p.alpha(t), p.sigma(t)
        return -(x - a[:, None] * MU) / (a**2 * SD**2 + s**2)[:, None]

    return score_fn


def _expected_minimum(p, t_eps: float, likelihood_weighting: bool) -> float:
    """E_t[alpha^2 SD^2 / (alpha^2 SD^2 + sigma^2)] (per dimension; times g^2 / sigma^2 with the likelihood
    weighting), t ~ U(t_eps, T): Var(z | x_t) per dimension, by the trapezoid rule on 400001 points."""
    ts = np.linspace(t_eps, p.t_max, 400_001)
    t = jnp.asarray(ts)
    a, s = np.asarray(p.alpha(t)), np.asarray(p.sigma(t))
    f = a**2 * SD**2 / (a**2 * SD**2 + s**2)
    if likelihood_weighting:
        f = f * np.asarray(p.pf_coefs(t, "tau")[0]) / s**2
    return float(np.trapezoid(f, ts) / (p.t_max - t_eps))


# (process, t_eps, likelihood_weighting); the VP's likelihood weight beta / sigma^2 ~ 1/t: t_eps 0.05 bounds
# its variance
CASES = [("vp", 1e-5, False), ("vp_cosine", 1e-5, False), ("ve", 1e-5, False), ("ve", 1e-5, True),
         ("vp", 0.05, True)]  # fmt: skip


def _x0(n: int = 200_000, d: int = 3):
    return MU + SD * jax.random.normal(jax.random.PRNGKey(0), (n, d), jnp.float64)


@pytest.mark.parametrize("name,t_eps,weighted", CASES)
def test_loss_at_the_exact_score_is_the_conditional_variance(x64, name, t_eps, weighted):
    """dsm_loss at the exact score = E_t[Var(z | x_t)] per dimension (times g^2 / sigma^2 when weighted), the
    analytic minimum, within 4 Monte Carlo standard errors (200,000 examples)."""
    p = score_sde.make_process(name, sigma_min=0.01, sigma_max=5.0)
    loss = np.asarray(score_sde.dsm_loss(_gaussian_score(p), p, jax.random.PRNGKey(1), _x0(), t_eps=t_eps,
                                         likelihood_weighting=weighted))  # fmt: skip
    se = loss.std() / np.sqrt(loss.size)
    assert abs(loss.mean() - _expected_minimum(p, t_eps, weighted)) < 4 * se, (loss.mean(), se)


@pytest.mark.parametrize("name,t_eps,weighted", CASES)
def test_loss_gradient_in_a_score_scale_vanishes_at_the_exact_score(x64, name, t_eps, weighted):
    """d/dc dsm_loss(c s*) at c = 1 is 0 within 4 standard errors of its per-example terms (s* minimises the
    loss). Negative control: at c = 0.95 the gradient is negative by more than 10 standard errors."""
    p = score_sde.make_process(name, sigma_min=0.01, sigma_max=5.0)
    exact, x0 = _gaussian_score(p), _x0(50_000)

    def per_example(c):
        return score_sde.dsm_loss(lambda x, t: c * exact(x, t), p, jax.random.PRNGKey(2), x0, t_eps=t_eps,
                                  likelihood_weighting=weighted)  # fmt: skip

    for c, at_minimum in ((1.0, True), (0.95, False)):
        g = np.asarray(jax.jacfwd(per_example)(jnp.float64(c)))
        se = g.std() / np.sqrt(g.size)
        if at_minimum:
            assert abs(g.mean()) < 4 * se, (g.mean(), se)
        else:
            assert g.mean() < -10 * se, (g.mean(), se)


@pytest.mark.parametrize("name", score_sde.PROCESSES)
def test_network_parameterisation_gives_the_oracle_score(x64, name):
    """An exact network in score_sde's parameterisation, built from the mixture oracle as the documented
    inverse (VP family: F(x, 999 t) = -sigma s*; VE: F(x, log sigma) = sigma s*), is turned back into the oracle's
    marginal score by `score_fn_from_network` (1e-10, x64)."""
    mix, p = oracles.anisotropic_mixture_2d(), score_sde.make_process(name, sigma_min=0.01, sigma_max=5.0)
    x = 2.0 * jax.random.normal(jax.random.PRNGKey(3), (64, 2), jnp.float64)
    t = jnp.linspace(1e-3, p.t_max - 1e-3, 64)
    ve = name == "ve"

    def net(x, time_input):
        tt = p.t_of_log_snr(-2.0 * time_input) if ve else time_input / score_sde.VP_TIME_SCALE
        return (1.0 if ve else -1.0) * p.sigma(tt)[:, None] * oracles.marginal_score(mix, p, x, tt)

    want = oracles.marginal_score(mix, p, x, t)
    np.testing.assert_allclose(score_sde.score_fn_from_network(net, p)(x, t), want, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("name,tol", [("ve", 1e-11), ("vp", 1e-9), ("vp_cosine", 1e-9)])
def test_denoiser_from_score_is_the_oracle_edm_denoiser(x64, name, tol):
    """`denoiser_from_score` of the oracle's exact score on each process equals the oracle's exact EDM denoiser
    E[x_0 | x_0 + sigma z = x] (`oracles.denoiser` under `processes.edm`) for sigma in [0.02, 40] (VE: x +
    sigma^2 s(x, t(sigma)); VP: the sigma -> t bisection and the alpha scaling). Negative control: the VP's
    denoiser without the alpha scaling (x + sigma(t)^2 s(x, t)) is off by > 1e-2."""
    mix = oracles.anisotropic_mixture_2d()
    p = score_sde.make_process(name, sigma_min=0.01, sigma_max=50.0)
    sigma = jnp.exp(jnp.linspace(np.log(0.02), np.log(40.0), 48))
    x = jax.random.normal(jax.random.PRNGKey(4), (48, 2), jnp.float64) * jnp.sqrt(1.0 + sigma[:, None] ** 2)
    score_fn = lambda x, t: oracles.marginal_score(mix, p, x, t)  # noqa: E731
    want = oracles.denoiser(mix, processes.edm(), x, sigma)
    got = score_sde.denoiser_from_score(score_fn, p)(x, sigma)
    np.testing.assert_allclose(got, want, rtol=0, atol=tol)
    if name != "ve":
        t = score_sde.t_of_edm_sigma(p, sigma)
        unscaled = x + (p.sigma(t) ** 2)[:, None] * score_fn(x, t)
        assert float(jnp.max(jnp.abs(unscaled - want))) > 1e-2


def test_t_of_edm_sigma_is_the_inverse_and_edm_vp_closed_form(x64):
    """t_of_edm_sigma(edm_sigma(t)) = t on every process (1e-10; the VP's by 64-step bisection), and on score_sde's
    VP (beta 0.1..20) it equals EDM's closed-form VP inverse `edm.vp_sigma_inv` (beta_d = 19.9) to 1e-12."""
    for name in score_sde.PROCESSES:
        p = score_sde.make_process(name)
        t = jnp.linspace(1e-4, p.t_max - 1e-4, 101)
        np.testing.assert_allclose(score_sde.t_of_edm_sigma(p, score_sde.edm_sigma(p, t)), t, rtol=0, atol=1e-10)
    sigma = jnp.exp(jnp.linspace(np.log(2e-3), np.log(150.0), 101))
    np.testing.assert_allclose(score_sde.t_of_edm_sigma(processes.vp_linear(), sigma), edm.vp_sigma_inv(sigma),
                               rtol=0, atol=1e-12)  # fmt: skip


def test_tweedie_denoise_is_the_oracle_posterior_mean(x64):
    """tweedie_denoise with the exact score = the oracle's E[x_0 | x_t] (1e-12) on the VP and the VE."""
    mix = oracles.anisotropic_mixture_2d()
    x = jax.random.normal(jax.random.PRNGKey(5), (32, 2), jnp.float64)
    for name, t in (("vp", 1e-3), ("ve", 1e-5), ("vp", 0.3)):
        p = score_sde.make_process(name)
        got = score_sde.tweedie_denoise(lambda x, tt: oracles.marginal_score(mix, p, x, tt), p, x, t)
        np.testing.assert_allclose(got, oracles.denoiser(mix, p, x, jnp.full((32,), t)), rtol=0, atol=1e-12)


@pytest.mark.parametrize("name,t_eps", [("ve", 1e-5), ("vp", 1e-3)])
def test_pc_sample_draws_the_gaussian_data(name, t_eps):
    """`pc_sample` with the exact score of N(0.3, 0.7^2 I) in 64 dimensions (300 samples, 1000 steps, snr
    0.16, one corrector step): sample mean within 0.01 of 0.3 and std within 2 % of 0.7 (5 standard errors,
    0.4 % each). Negative controls: 20 steps (std +8 %) and snr 0.5 (+12 %) fail."""
    p = score_sde.make_process(name, sigma_min=0.01, sigma_max=10.0)
    exact = _gaussian_score(p)

    def moments(num_steps, snr):
        x = np.asarray(score_sde.pc_sample(exact, p, jax.random.PRNGKey(6), (300, 64), num_steps=num_steps,
                                           t_eps=t_eps, snr=snr, n_corrector=1))  # fmt: skip
        return abs(x.mean() - MU), abs(x.std() / SD - 1.0)

    mean_err, std_err = moments(1000, 0.16)
    assert mean_err < 0.01 and std_err < 0.02, (mean_err, std_err)
    assert moments(20, 0.16)[1] > 0.02
    assert moments(1000, 0.5)[1] > 0.02


# --------------------------------------------------------------------------- the config layer


def _toy(arg: str):
    return presets.load_config(os.path.join(REPO, "configs", f"toy2d.py:{arg}"))


def test_run_check_counts_the_process_and_frees_the_training_only_keys():
    """restore.check_compatible: sde.process and its parameters (sde.sigma_max) always count; sde.t_eps,
    likelihood_weighting and sampling_eps may differ for sample / eval but not for a resume."""
    saved = _toy("ve_sde").to_dict()
    for key, value, free_for_sampling in (("sde.process", "vp", False), ("sde.sigma_max", 50.0, False),
                                          ("sde.t_eps", 1e-3, True), ("sde.likelihood_weighting", True, True),
                                          ("sde.sampling_eps", 1e-3, True)):  # fmt: skip
        config = _toy("ve_sde")
        config.sde[key.split(".")[1]] = value
        with pytest.raises(ValueError, match=f"{key}: run"):
            restore.check_compatible(saved, config.to_dict(), purpose="resume")
        if free_for_sampling:
            restore.check_compatible(saved, config.to_dict(), purpose="sample")
        else:
            with pytest.raises(ValueError, match=f"{key}: run"):
                restore.check_compatible(saved, config.to_dict(), purpose="sample")


def test_sample_fingerprint_holds_sde_and_the_samplers_keys():
    """A score_sde run's sample fingerprint changes with sde.sampling_eps, sampling.pc_snr and sampling.num_steps
    (its 'pc' reads them); a DDPM run's does not change with sde.*."""
    base = builders.build(_toy("ve_sde")).sampling.fingerprint_parts
    for section, key, value in (("sde", "sampling_eps", 1e-3), ("sampling", "pc_snr", 0.1),
                                ("sampling", "num_steps", 500)):  # fmt: skip
        config = _toy("ve_sde")
        config[section][key] = value
        assert builders.build(config).sampling.fingerprint_parts != base, key
    config = _toy("swiss_roll")
    config.sde.process = "ve"
    ddpm = builders.build(_toy("swiss_roll")).sampling.fingerprint_parts
    assert builders.build(config).sampling.fingerprint_parts == ddpm


def test_bad_score_sde_settings_are_refused_by_build():
    """One ValueError naming the value: an unknown sde.process, sde.t_eps = 0 (sigma(0) = 0 for the VP),
    sigma_min >= sigma_max, sampling.num_steps with 'ode', clip_x0 with 'pc', sampling.order, a flow sampler,
    bits/dim, guidance."""
    cases = [("vp_sde", "sde.process", "edm", "unknown sde.process 'edm'"),
             ("vp_sde", "sde.t_eps", 0.0, "sde.t_eps must be"),
             ("ve_sde", "sde.sigma_min", 10.0, "sde.sigma_min must be < sde.sigma_max"),
             ("vp_sde", "sampling.num_steps", 10, "sampling.num_steps=10 does not apply to sampling.method='ode'"),
             ("ve_sde", "sampling.clip_x0", 1.0, "sampling.clip_x0=1.0 does not apply to sampling.method='pc'"),
             ("ve_sde", "sampling.order", 2, "sampling.order=2 applies to"),
             ("ve_sde", "sampling.method", "heun",
              "sampling.method='heun' does not fit training.objective='score_sde'"),
             ("ve_sde", "eval.bpd_num_examples", 8, "bpd_num_examples=8")]  # fmt: skip
    for arg, key, value, message in cases:
        config = _toy(arg)
        section, field = key.split(".")
        config[section][field] = value
        with pytest.raises(ValueError, match=message):
            builders.build(config)
    config = _toy("vp_sde")
    config.sampling.guidance_w = 1.0
    with pytest.raises(ValueError, match="has no guidance"):
        builders.build(config).sampler()


# --------------------------------------------------------------------------- through python -m diffax.main


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """toy2d ':vp_sde' and ':ve_sde' trained, sampled and evaluated as tests/test_continuous_time_cli.py's runs."""
    from test_continuous_time_cli import trained_runs

    return trained_runs(tmp_path_factory, ("vp_sde", "ve_sde"))


@pytest.mark.slow
@pytest.mark.parametrize("variant", ["vp_sde", "ve_sde"])
def test_toy2d_score_sde_reaches_the_ddpm_quality(runs, variant, tmp_path):
    """distance_ratio <= 1.5 x DDPM's at equal steps (2.52; measured :vp_sde 1.94 with 'ode' (rtol 1e-3), :ve_sde 1.89 with
    'pc'). Negative control: the same config trained 1 step fails it."""
    from test_continuous_time_cli import BOUND, main, ratio

    assert ratio(runs[variant]) <= BOUND, ratio(runs[variant])
    main(tmp_path, f"toy2d.py:{variant}", "--mode=train,sample,eval", "--config.training.num_steps=1",
         "--config.sampling.num_samples=2000")
    assert ratio(tmp_path) > BOUND, ratio(tmp_path)


@pytest.mark.slow
def test_runs_sampled_by_the_other_methods(runs, tmp_path):
    """The :ve_sde checkpoint sampled with 'ode' (measured 1.77) and the :vp_sde one with 'edm' through
    `denoiser_from_score` (18 steps = 35 NFE; measured 2.12) pass the same bound (2.52). Negative control: 'edm'
    with 3 steps (5 NFE; measured 143) fails it. (The :ve_sde run by 'edm', 18 steps: 2.52 at seed 0, at the
    bound; with --config.seed=1 / 2 (other samples and held-out data) 2.06 / 3.45, so it is not asserted.)"""
    from test_continuous_time_cli import BOUND, SHORT, main, ratio

    got = {}
    for variant, method, steps in (("ve_sde", "ode", None), ("vp_sde", "edm", 18), ("vp_sde", "edm", 3)):
        workdir = tmp_path / f"{variant}{method}{steps}"
        shutil.copytree(runs[variant] / "checkpoints", workdir / "checkpoints")
        flags = [f"--config.sampling.method={method}"] + ([f"--config.sampling.num_steps={steps}"] if steps else [])
        main(workdir, f"toy2d.py:{variant}", "--mode=sample,eval", *SHORT, *flags)
        got[variant, method, steps] = ratio(workdir)
    assert got["ve_sde", "ode", None] <= BOUND and got["vp_sde", "edm", 18] <= BOUND, got
    assert got["vp_sde", "edm", 3] > BOUND, got


@pytest.mark.slow
def test_resumed_score_sde_run_is_bitwise_the_straight_one(runs, tmp_path):
    """The :vp_sde run's workdir with its step-300 checkpoint removed, resumed from step 150: every array of the
    step-300 TrainState equals the straight run's bitwise (and the resumed steps did move the weights)."""
    import orbax.checkpoint as ocp
    from test_continuous_time_cli import SHORT, STEPS, main

    resumed = tmp_path / "resumed"
    shutil.copytree(runs["vp_sde"] / "checkpoints", resumed / "checkpoints")
    shutil.rmtree(resumed / "checkpoints" / str(STEPS))
    main(resumed, "toy2d.py:vp_sde", "--mode=train", *SHORT)

    def state(workdir, step):
        return ocp.StandardCheckpointer().restore(os.path.join(workdir, "checkpoints", str(step), "state"))

    a, b = state(runs["vp_sde"], STEPS), state(resumed, STEPS)
    assert int(a["step"]) == int(b["step"]) == STEPS
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
    moved = max(float(np.max(np.abs(np.asarray(x) - np.asarray(y))))
                for x, y in zip(jax.tree.leaves(state(runs["vp_sde"], 150)["params"]), jax.tree.leaves(a["params"])))
    assert moved > 1e-3, moved


@pytest.mark.slow
def test_another_process_is_refused_on_resume_and_sample(runs):
    """Resuming the :ve_sde run with sde.process='vp' (the :vp_sde config), sampling it with another sigma_max,
    and resuming the :vp_sde run as a DDPM run: one `diffax: error:` line naming the values, nothing written."""
    from test_continuous_time_cli import SHORT, main

    cases = [(runs["ve_sde"], "toy2d.py:vp_sde", "--mode=train", "sde.process: run 've' vs now 'vp'"),
             (runs["ve_sde"], "toy2d.py:ve_sde", "--mode=sample --config.sde.sigma_max=8.0",
              "sde.sigma_max: run 6.0 vs now 8.0"),
             (runs["vp_sde"], "toy2d.py:swiss_roll", "--mode=train",
              "training.objective: run 'score_sde' vs now 'diffusion'")]  # fmt: skip
    for workdir, config, flags, message in cases:
        before = sorted(p.name for p in workdir.rglob("*"))
        out = main(workdir, config, *flags.split(), *SHORT, check=False)
        assert out.returncode != 0
        assert "diffax: error: " in out.stderr and message in out.stderr, out.stderr[-2000:]
        assert sorted(p.name for p in workdir.rglob("*")) == before
