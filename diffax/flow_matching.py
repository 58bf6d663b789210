"""Flow matching / rectified flow: the conditional-velocity objective and its ODE samplers (pure JAX).

The straight interpolation of Liu et al. 2023 (rectified flow) and Lipman et al. 2023 (flow matching with
the optimal-transport path, sigma_min = 0), with data at t = 0 and noise at t = 1:

    x_t = (1 - t) x_0 + t eps,   eps ~ N(0, I),   d x_t / dt = eps - x_0.

A network v(x, t) regressed on the conditional velocity eps - x_0 learns the marginal velocity
v*(x, t) = E[eps - x_0 | x_t = x], whose ODE dx/dt = v*(x, t) carries N(0, I) at t = 1 to the data at
t = 0 (Liu et al. 2023, Theorem 3.3; Lipman et al. 2023, Theorem 2). `flow_euler` / `flow_heun` integrate
it from t = 1 to t = 0 on the uniform grid t_i = 1 - i / N.

``velocity_fn(x, t) -> v`` takes x of shape (B, ...) and t of shape (B,) (float in [0, 1]); the
networks of the run layer see 1000 t as their time input (`diffax.training.train_builders.flow_loss_fn`).
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp

Array = jax.Array
VelocityFn = Callable[[Array, Array], Array]

__all__ = ["T_SAMPLINGS", "sample_t", "flow_matching_loss", "flow_times", "flow_euler", "flow_heun",
           "denoiser_from_velocity"]

T_SAMPLINGS = ("uniform", "logit_normal")


def sample_t(key: Array, n: int, *, t_sampling: str = "uniform", logit_mean: float = 0.0, logit_std: float = 1.0,
             dtype=jnp.float32) -> Array:
    """n training times in (0, 1): uniform, or logit-normal t = sigmoid(m + s u), u ~ N(0, 1)
    (Esser et al. 2024, SD3, sec. 3.1, eq. 19: 'lognorm(m, s)', which weights the middle of the path)."""
    if t_sampling == "uniform":
        return jax.random.uniform(key, (n,), dtype)
    if t_sampling == "logit_normal":
        return jax.nn.sigmoid(logit_mean + logit_std * jax.random.normal(key, (n,), dtype))
    raise ValueError(f"t_sampling must be one of {T_SAMPLINGS}, got {t_sampling!r}")


def flow_matching_loss(velocity_fn: VelocityFn, key: Array, x0: Array, *, t_sampling: str = "uniform",
                       logit_mean: float = 0.0, logit_std: float = 1.0) -> Array:
    """Per-example conditional flow-matching loss, shape (B,) (Lipman et al. 2023, eq. 23 with sigma_min = 0;
    Liu et al. 2023, eq. 1):

        t ~ p(t),  eps ~ N(0, I),  x_t = (1 - t) x_0 + t eps,
        L(x_0) = mean over the non-batch axes of (v(x_t, t) - (eps - x_0))^2.

    p(t) is U[0, 1] (``'uniform'``) or logit-normal (``'logit_normal'``, `sample_t`). The key is split into
    the t key and the noise key. Its minimum over v is E_t E[Var(eps - x_0 | x_t)], reached at the marginal
    velocity v* = E[eps - x_0 | x_t].
    """
    k_t, k_eps = jax.random.split(key)
    b = x0.shape[0]
    t = sample_t(k_t, b, t_sampling=t_sampling, logit_mean=logit_mean, logit_std=logit_std, dtype=x0.dtype)
    eps = jax.random.normal(k_eps, x0.shape, x0.dtype)
    tb = t.reshape((b,) + (1,) * (x0.ndim - 1))
    x_t = (1.0 - tb) * x0 + tb * eps
    err = velocity_fn(x_t, t) - (eps - x0)
    return jnp.mean(jnp.square(err).reshape(b, -1), axis=-1)


def flow_times(num_steps: int, dtype=jnp.float32) -> Array:
    """The uniform grid t_i = 1 - i / N, i = 0..N (num_steps + 1 values, from 1 to 0)."""
    if isinstance(num_steps, bool) or not isinstance(num_steps, int) or num_steps < 1:
        raise ValueError(f"num_steps must be an int >= 1, got {num_steps!r}")
    return 1.0 - jnp.arange(num_steps + 1, dtype=dtype) / num_steps


def _integrate(velocity_fn: VelocityFn, latents: Array, num_steps: int, heun: bool) -> Array:
    ts = flow_times(num_steps, latents.dtype)
    b = latents.shape[0]

    def v(x: Array, t: Array) -> Array:
        return velocity_fn(x, jnp.broadcast_to(t, (b,)))

    def step(x: Array, t_pair: tuple[Array, Array]) -> tuple[Array, None]:
        t_cur, t_next = t_pair
        h = t_next - t_cur
        d = v(x, t_cur)
        x_euler = x + h * d
        if not heun:
            return x_euler, None
        return x + 0.5 * h * (d + v(x_euler, t_next)), None

    x, _ = jax.lax.scan(step, latents, (ts[:-1], ts[1:]))
    return x


def flow_euler(velocity_fn: VelocityFn, latents: Array, *, num_steps: int) -> Array:
    """Euler's method for dx/dt = v(x, t) from t = 1 (x = latents ~ N(0, I)) to t = 0 on `flow_times`:
    x_{i+1} = x_i + (t_{i+1} - t_i) v(x_i, t_i). One `lax.scan`; N network calls (NFE = N); global error O(1/N)."""
    return _integrate(velocity_fn, latents, num_steps, heun=False)


def flow_heun(velocity_fn: VelocityFn, latents: Array, *, num_steps: int) -> Array:
    """Heun's method (explicit trapezoid) on `flow_times`, from t = 1 to t = 0: with h = t_{i+1} - t_i,
    d = v(x_i, t_i), x' = x_i + h d,  x_{i+1} = x_i + h (d + v(x', t_{i+1})) / 2.

    Unlike EDM's Algorithm 2 the last step is corrected too: the velocity at t = 0 is finite (EDM skips it
    because D(x; 0) divides by sigma = 0 in its ODE). NFE = 2N; global error O(1/N^2). One `lax.scan`."""
    return _integrate(velocity_fn, latents, num_steps, heun=True)


def denoiser_from_velocity(velocity_fn: VelocityFn) -> Callable[[Array, Array], Array]:
    """A flow-matching model as an EDM denoiser D(x; sigma) = E[x_0 | x_0 + sigma eps = x] (for `diffax.edm.
    edm_sampler`): x_sigma = x_0 + sigma eps is the flow's x_t = (1 - t) x_0 + t eps divided by 1 - t, with
    t = sigma / (1 + sigma), and E[x_0 | x_t] = x_t - t v(x_t, t) (from x_0 = x_t - t (eps - x_0)), so

        D(x; sigma) = x_t - t v(x_t, t),   x_t = x / (1 + sigma),   t = sigma / (1 + sigma).

    sigma has shape (B,)."""

    def denoise_fn(x: Array, sigma: Array) -> Array:
        sigma = jnp.broadcast_to(jnp.asarray(sigma, x.dtype), (x.shape[0],))
        t = sigma / (1.0 + sigma)
        col = (x.shape[0],) + (1,) * (x.ndim - 1)
        x_t = x * (1.0 - t).reshape(col)
        return x_t - t.reshape(col) * velocity_fn(x_t, t)

    return denoise_fn
