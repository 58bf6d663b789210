"""Conditional generation as model-function wrappers: classifier-free and classifier guidance.

Each wrapper turns conditional ingredients into a plain ``model_fn(x_t, t) -> output`` that any
sampler in `diffax.samplers` takes unchanged (``ddpm``, ``ddim``, ``pc``). In score terms, with
b_t = sqrt(1 - alpha-bar_t) and eps = -b_t grad log q (Song et al. 2021):

  classifier guidance   eps~ = eps(x_t) - b_t * scale * grad_x log f(y | x_t, t)
                        = -b_t grad log [ q(x_t) f(y | x_t)^scale ]          (Dhariwal & Nichol 2021)
  classifier-free       eps~ = (1 + w) eps(x_t, y) - w eps(x_t, null)
                        = -b_t grad log [ q(x_t | y) (q(y | x_t))^w ]       (Ho & Salimans 2022, eq. 6)

so with exact ingredients CFG at guidance weight w equals classifier guidance at scale 1 + w
(the seeds' gamma = 1 + w); both give the exact conditional eps at scale = 1 / w = 0.

Parameterisations. The formulas are stated on eps; a model may output x0 or v instead (the
samplers' ``mean_type``). `classifier` takes ``mean_type``, converts the output to eps, shifts it
and converts back, so its result is in the model's own parameterisation. `classifier_free` needs
no conversion: at fixed (x_t, t) the maps eps <-> x0 <-> v are affine,
x0 = (x_t - b_t eps) / a_t and v = (eps - b_t x_t) / a_t, and its weights (1 + w, -w) sum to 1, so
combining two x0 (or v) outputs equals converting the combination of their eps (checked in
tests/test_guidance.py against x0- and v-models of the exact oracle).

`from_score` is the score view of DDPM: a score model s(x_t, t) becomes the eps model
-b_t s(x_t, t), so the DDPM mean is (x_t + beta_t s) / sqrt(alpha_t).

Learned-variance models (2C output channels on the last axis, the second half a variance part;
split by `diffusion.split_model_output`) are supported: only the first half (eps, x0 or v) is
guided; CFG keeps the conditional branch's variance half, as GLIDE and guided-diffusion do.
Nothing here jits; the wrappers are pure and trace inside the caller's sampler.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from diffax import diffusion
from diffax._util import ModelFn
from diffax.schedules import Schedule

Array = jnp.ndarray

__all__ = ["classifier_free", "classifier", "from_score"]


def _join(eps: Array, var_part: Array | None) -> Array:
    return eps if var_part is None else jnp.concatenate([eps, var_part], axis=-1)


def _check_scalar(name: str, value) -> None:
    """A concrete guidance strength must be a finite real scalar (a traced one passes through)."""
    if isinstance(value, jax.core.Tracer):
        return
    try:
        v = np.asarray(value)
        ok = v.ndim == 0 and np.issubdtype(v.dtype, np.number) and bool(np.isfinite(v))
    except (TypeError, ValueError):
        ok = False
    if not ok:
        raise ValueError(f"{name} must be a finite real scalar, got {value!r}")


def _check_labels(y) -> Array:
    """y as an array; raises ValueError unless it is a scalar label or a (B,) array of labels."""
    y = jnp.asarray(y)
    if y.ndim > 1:
        raise ValueError(f"y must be a scalar or a (B,) array of labels, got shape {y.shape}")
    return y


def classifier_free(
    eps_fn: Callable[[Array, Array, Array], Array],
    y: Array,
    *,
    w: float,
    null_label: int,
) -> ModelFn:
    """Classifier-free guidance (Ho & Salimans 2022, eq. 6):

        eps~(x_t, t) = (1 + w) eps(x_t, t, y) - w eps(x_t, t, null_label),

    with ONE batched call of ``eps_fn``: the inputs [x, x], [t, t], [y, null] are concatenated
    on the batch axis and the output split in two. w = 0 is the conditional model, w = -1 the
    unconditional one; the guidance scale gamma of the seeds' slides is 1 + w.

    The same formula is correct for x0- and v-models (use the output as is): the weights sum to 1
    and the eps <-> x0 <-> v conversions are affine at fixed (x_t, t), so the combination commutes
    with them (see the module docstring).

    Args:
      eps_fn: (x_t, t, y) -> output, a conditional model (eps, x0 or v) trained with label dropout
        to ``null_label`` (2C channels for a learned variance: the conditional half's variance is kept).
      y: the labels, an int array of shape (B,) (or a scalar, broadcast to the batch).
      w: the guidance weight (a Python float or a traced scalar).
      null_label: the label meaning "no condition" (e.g. ``num_classes`` for `diffax.models.MLP`).

    Returns:
      model_fn(x_t, t) -> guided output, of ``eps_fn``'s output shape for a batch of B.
    """
    _check_scalar("w", w)
    y = _check_labels(y)

    def model_fn(x_t: Array, t: Array) -> Array:
        b = x_t.shape[0]
        labels = jnp.broadcast_to(y, (b,))
        t_b = jnp.broadcast_to(jnp.asarray(t), (b,))
        out = eps_fn(
            jnp.concatenate([x_t, x_t], axis=0),
            jnp.concatenate([t_b, t_b], axis=0),
            jnp.concatenate([labels, jnp.full((b,), null_label, dtype=labels.dtype)], axis=0),
        )
        out_cond, out_null = out[:b], out[b:]
        eps_cond, var_part = diffusion.split_model_output(out_cond, x_t.shape)
        eps_null, _ = diffusion.split_model_output(out_null, x_t.shape)
        return _join((1.0 + w) * eps_cond - w * eps_null, var_part)

    return model_fn


_FROM_EPS = {"eps": None, "x0": diffusion.eps_to_x0, "v": diffusion.eps_to_v}


def _check_mean_type(mean_type: str) -> None:
    if mean_type not in diffusion.MEAN_TYPES:
        raise ValueError(
            f"unknown mean_type {mean_type!r}; allowed: {list(diffusion.MEAN_TYPES)} "
            "(the parameterisation of model_fn's output)"
        )


def _from_eps(s: Schedule, x_t: Array, t: Array, eps: Array, mean_type: str) -> Array:
    """The model output of `mean_type` that implies `eps` at (x_t, t): the inverse of `diffusion.predict_eps`."""
    conv = _FROM_EPS[mean_type]
    return eps if conv is None else conv(s, x_t, t, eps)


def classifier(
    model_fn: ModelFn,
    log_prob_fn: Callable[[Array, Array, Array], Array],
    s: Schedule,
    y: Array,
    *,
    scale: float,
    mean_type: str = "eps",
) -> ModelFn:
    """Classifier guidance (Dhariwal & Nichol 2021, Algorithm 2; guided-diffusion's ``condition_score``):

        eps~(x_t, t) = eps(x_t, t) - sqrt(1 - alpha-bar_t) * scale * grad_x log f(y | x_t, t),

    i.e. the eps of q(x_t) f(y | x_t, t)^scale. With the exact classifier q(y | x_t) and scale = 1
    this is the exact conditional eps(x_t, t, y) (Bayes: grad log q(x_t | y) = grad log q(x_t) +
    grad log q(y | x_t)).

    The shift is defined on eps, so a model of another parameterisation is converted first and the
    result converted back (`diffusion.x0_to_eps` / `v_to_eps`, then `eps_to_x0` / `eps_to_v`):
    the guided output is in ``model_fn``'s own parameterisation, e.g. for an x0-model
    x0~ = x0 + (1 - alpha-bar_t) / sqrt(alpha-bar_t) * scale * grad log f, and for a v-model
    v~ = v - sqrt(1 - alpha-bar_t) / sqrt(alpha-bar_t) * scale * grad log f. (Shifting an x0 or v
    output as if it were eps is wrong: it moves the sample the other way, or by the wrong amount.)

    Args:
      model_fn: (x_t, t) -> output, an unconditional model whose output is eps, x0 or v
        (``mean_type``); 2C channels for a learned variance: only the first C are guided, the
        variance part is returned unchanged.
      log_prob_fn: (x_t, t, y) -> (B,) log f(y | x_t, t), a noisy classifier's log-probability of
        the labels; it must treat examples independently (the gradient is of the batch sum).
      s: the schedule of the diffusion (for sqrt(1 - alpha-bar_t) and the conversions).
      y: the target labels, (B,) int (or a scalar, broadcast).
      scale: the classifier scale (gamma; a Python float or a traced scalar).
      mean_type: 'eps' | 'x0' | 'v', the parameterisation of ``model_fn``'s output (the sampler's
        ``mean_type``).

    Returns:
      model_fn(x_t, t) -> guided output, in the same parameterisation (and shape) as ``model_fn``'s.

    Raises:
      ValueError: for a ``mean_type`` not in `diffusion.MEAN_TYPES` or a non-scalar ``scale``.
    """
    _check_scalar("scale", scale)
    _check_mean_type(mean_type)
    y = _check_labels(y)

    def guided_fn(x_t: Array, t: Array) -> Array:
        b = x_t.shape[0]
        labels = jnp.broadcast_to(y, (b,))
        out, var_part = diffusion.split_model_output(model_fn(x_t, t), x_t.shape)

        def total_log_prob(x):
            lp = log_prob_fn(x, t, labels)
            if lp.shape != (b,):
                raise ValueError(f"log_prob_fn must return shape ({b},), got {lp.shape}")
            return jnp.sum(lp)

        grad = jax.grad(total_log_prob)(x_t)
        b_t = jnp.sqrt(1.0 - diffusion.extract(s.alphas_cumprod, t, x_t.ndim))
        eps = diffusion.predict_eps(s, out, x_t, t, mean_type)
        guided = _from_eps(s, x_t, t, eps - b_t * scale * grad, mean_type)
        return _join(guided, var_part)

    return guided_fn


def from_score(score_fn: Callable[[Array, Array], Array], s: Schedule) -> ModelFn:
    """The eps model of a score model (the score view of DDPM; Song et al. 2021, eq. 4 / Tweedie):

        eps(x_t, t) = -sqrt(1 - alpha-bar_t) * s(x_t, t),   s ~ grad log q(x_t),

    so the DDPM mean (x_t - beta_t / sqrt(1 - alpha-bar_t) eps) / sqrt(alpha_t) becomes
    (x_t + beta_t s(x_t, t)) / sqrt(alpha_t) (Ho et al. 2020, eq. 11 in score form; the seeds'
    "denoising matching with the score function"). Use with ``mean_type='eps'``.
    """

    def model_fn(x_t: Array, t: Array) -> Array:
        return diffusion.score_to_eps(s, x_t, t, score_fn(x_t, t))

    return model_fn
