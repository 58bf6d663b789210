"""experiments/nfe_frontier.py: its fast exact eps of an image-shaped mixture and its reference ODE solution."""

from __future__ import annotations

import importlib.util
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffax import dpm_solver, oracles, schedules

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _frontier_module():
    path = os.path.join(REPO, "experiments", "nfe_frontier.py")
    spec = importlib.util.spec_from_file_location("nfe_frontier", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_matmul_eps_of_an_image_mixture_equals_the_brute_force_oracle():
    """`MixtureModel.eps_fn` (softmax of x.mu_k logits, one (B, K) matmul) equals `oracles.GaussianMixture.eps` (the
    (B, K, D) brute force) in float64 to 1e-10 max|eps| at K = 200 image-like means in 784 dims, std 0.05, for points
    of the noised data at t = 0, 1, 250, 999 and for N(0, I) points (measured <= 5e-12 max|eps|). Negative control:
    the index off by one (t + 1) differs by > 1e-6 max|eps| at every t (measured >= 2.9e-3). Synthetic means: tests
    use no shared data."""
    nf = _frontier_module()
    with jax.enable_x64(True):
        s = schedules.linear(1000)
        rng = np.random.default_rng(0)
        means = np.where(rng.random((200, 784)) < 0.2, 1.0, -1.0) * rng.uniform(0.5, 1.0, (200, 784))
        mix = oracles.GaussianMixture(np.ones(200), means, np.full(200, 0.05), s)
        model = nf.MixtureModel(mix, s)
        eps, oracle_eps = jax.jit(model.eps_fn(model.params)), jax.jit(mix.eps)
        key = jax.random.PRNGKey(1)
        x0 = mix.sample(key, 16)
        for t in (0, 1, 250, 999):
            abar = float(s.alphas_cumprod[t])
            z = jax.random.normal(jax.random.fold_in(key, t), x0.shape, jnp.float64)
            for x in (np.sqrt(abar) * x0 + np.sqrt(1 - abar) * z, z):
                tb = jnp.full((16,), t, jnp.int32)
                want = oracle_eps(x, tb)
                scale = float(jnp.max(jnp.abs(want)))
                assert float(jnp.max(jnp.abs(eps(x, tb) - want))) <= 1e-10 * scale, t
                if t < 999:
                    assert float(jnp.max(jnp.abs(eps(x, tb + 1) - want))) > 1e-6 * scale, t


def test_matmul_model_rejects_unequal_stds():
    nf = _frontier_module()
    s = schedules.linear(100)
    mix = oracles.GaussianMixture([1.0, 1.0], [[0.0], [1.0]], [0.1, 0.2], s)
    with pytest.raises(ValueError, match="one isotropic std"):
        nf.MixtureModel(mix, s)


@pytest.mark.slow
def test_reference_solution_converged_and_the_limit_of_the_samplers():
    """On the 8-Gaussian ring (64 points): the adaptive reference at rtol = atol = 1e-10 is within 1e-6 rms of the
    same solve at 1e-8 (measured 8e-9), and DPM-Solver++(3) on all 1000 indices + the same final step to sigma = 0
    within 3e-4 of it (measured 6.8e-5): the samplers' limit and the reference are one solution. Negative control:
    the same DPM-Solver++(3) end point without the final step (x at index 0, sigma_0 = 0.01) is > 3e-4 away
    (measured 9.4e-4). ~15 s on 2 cores."""
    nf = _frontier_module()
    with jax.enable_x64(True):
        s = schedules.linear(1000)
        model = nf.MixtureModel(nf.ring_mixture().with_schedule(s), s)
        x_T = jax.random.normal(jax.random.PRNGKey(0), (64, 2), jnp.float64)
        ref, checks = nf.reference_solution(model, x_T, tol=1e-10)
        assert checks["rms_ref_100tol"] < 1e-6, checks
        assert checks["rms_dpm3_all_indices"] < 3e-4, checks
        every = np.arange(999, -1, -1)
        x_idx0 = dpm_solver.dpm_solver_pp(model.eps_fn(model.params), s, None, x_T.shape, order=3, timesteps=every,
                                          final_step="none", x_init=x_T)  # fmt: skip
        assert nf._rms(x_idx0, ref) > 3e-4
