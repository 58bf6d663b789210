"""Config -> the network and its forward process: model.* -> a Flax module, diffusion.* -> a `Schedule`.

One of the per-part config readers of `diffax.training.builders` (which assembles them into an
`Experiment`); each function validates its section (``ValueError`` naming the bad value and what is
allowed). With model.init_from (a diffusers UNet2DModel directory) the network is that directory's,
after `check_init_from` has refused a config that contradicts it.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from diffax import diffusion, models, schedules
from diffax._util import check_choice, check_int
from diffax.schedules import Schedule

__all__ = ["MODELS", "MODEL_DTYPES", "build_schedule", "learn_sigma", "build_model", "init_from", "flag_value",
           "check_init_from", "init_params"]  # fmt: skip

MODELS = ("mlp", "unet", "classifier")
MODEL_DTYPES = ("float32", "bfloat16")  # model.dtype: the activations (parameters stay float32)


def build_schedule(config: ml_collections.ConfigDict) -> Schedule:
    """`schedules.get(diffusion.schedule, diffusion.num_timesteps, ...)`, refused when x_T is far from N(0, I).

    The linear and quadratic schedules take diffusion.beta_start / beta_end (None: 1e-4 and 0.02 scaled by
    1000 / T, improved-diffusion's rule). A schedule whose alpha-bar_{T-1} > diffusion.max_terminal_alpha_bar
    is refused: every sampler starts from x_T ~ N(0, I), which q(x_T | x_0) then is not.
    """
    d = config.diffusion
    T = check_int("diffusion.num_timesteps", d.num_timesteps, 1)
    kwargs = {}
    if d.beta_start is not None or d.beta_end is not None:
        if d.schedule not in ("linear", "quadratic", "sigmoid"):
            raise ValueError(f"diffusion.beta_start / beta_end apply to the 'linear', 'quadratic' and 'sigmoid' schedules, "
                             f"not {d.schedule!r}; leave them None")
        if d.beta_start is None or d.beta_end is None:
            raise ValueError(f"set both diffusion.beta_start and diffusion.beta_end (or neither), got "
                             f"beta_start={d.beta_start!r}, beta_end={d.beta_end!r}")
        kwargs = dict(beta_start=float(d.beta_start), beta_end=float(d.beta_end))
    s = schedules.get(d.schedule, T, **kwargs)
    limit = float(d.max_terminal_alpha_bar)
    terminal = float(np.asarray(s.alphas_cumprod)[-1])
    if not terminal <= limit:
        raise ValueError(
            f"diffusion.schedule={d.schedule!r} at num_timesteps={T} ends at alpha-bar_(T-1) = {terminal:.3g} > "
            f"diffusion.max_terminal_alpha_bar={limit:g}: x_T is not close to N(0, I), where sampling starts. "
            "Use more timesteps, a larger diffusion.beta_end, or set diffusion.max_terminal_alpha_bar=1.0 to allow it"
        )
    return s


def learn_sigma(config: ml_collections.ConfigDict) -> bool:
    """True when the model outputs its variance too: diffusion.var_type 'learned' or 'learned_range'."""
    var_type = check_choice("diffusion.var_type", config.diffusion.var_type, diffusion.VAR_TYPES)
    return var_type in ("learned", "learned_range")


def build_model(config: ml_collections.ConfigDict, data_shape: tuple[int, ...]):
    """The Flax module named by model.name, with the other model.* fields as its attributes.

    `data_shape` is one example's shape ((D,) for toys, (H, W, C) for images); the MLP needs 1-D
    data, the UNet 3-D. learn_sigma = diffusion.var_type in ('learned', 'learned_range').
    training.objective 'edm': the network wrapped in `diffax.models.Preconditioned` (edm.kind, sigma_data),
    called with sigma instead of t.
    With model.init_from (a diffusers UNet2DModel directory), the UNet of its config.json
    (`diffax.interop`), after `check_init_from`; model.dropout and model.dtype are the config's.
    """
    name = check_choice("model.name", config.model.name, MODELS)
    fields = {k: v for k, v in config.model.to_dict().items() if k not in ("name", "init_from")}
    for k in ("ch_mult", "attn_resolutions"):
        if k in fields:
            fields[k] = tuple(fields[k])
    if "dtype" in fields:
        fields["dtype"] = jnp.dtype(check_choice("model.dtype", fields["dtype"], MODEL_DTYPES))
    data_shape = tuple(int(d) for d in data_shape)
    if name == "classifier":
        fields.setdefault("num_classes", 10)
        return models.Classifier(**fields)
    if name == "mlp":
        if len(data_shape) != 1:
            raise ValueError(f"model.name='mlp' needs vector data (D,), got example shape {data_shape}; use 'unet'")
        return _preconditioned(config, models.MLP(learn_sigma=learn_sigma(config), **fields))
    if len(data_shape) != 3:
        raise ValueError(f"model.name='unet' needs image data (H, W, C), got example shape {data_shape}; use 'mlp'")
    if init_from(config):
        from diffax.interop import diffusers_config as hf

        check_init_from(config, data_shape)
        return hf.unet_from_config(hf.read_unet_config(init_from(config)), dropout=float(config.model.dropout),
                                   dtype=fields.get("dtype", jnp.float32))  # fmt: skip
    return _preconditioned(config, models.UNet(learn_sigma=learn_sigma(config), **fields))


EDM_KINDS = ("edm", "vp", "ve")


def _preconditioned(config: ml_collections.ConfigDict, net):
    """``net`` as EDM's D(x; sigma) (`diffax.models.Preconditioned`, edm.kind, edm.sigma_data) for
    training.objective 'edm'; ``net`` itself otherwise."""
    if config.training.objective != "edm":
        return net
    from diffax.models.preconditioned import Preconditioned

    e = config.edm
    sigma_data = e.sigma_data
    if isinstance(sigma_data, bool) or not isinstance(sigma_data, (int, float)) or not 0 < sigma_data < np.inf:
        raise ValueError(f"edm.sigma_data must be a finite number > 0, got {sigma_data!r}")
    return Preconditioned(net, kind=check_choice("edm.kind", e.kind, EDM_KINDS), sigma_data=float(sigma_data))


def init_from(config: ml_collections.ConfigDict) -> str | None:
    """model.init_from, the diffusers directory whose weights the run starts from (None when unset or '')."""
    return config.model.get("init_from") or None


def flag_value(v: Any) -> str:
    """``v`` as the VALUE of a ``--config.KEY=VALUE`` flag: a tuple or list as ``(a,b,)``, else ``str(v)``."""
    return "(" + ",".join(str(x) for x in v) + ",)" if isinstance(v, (tuple, list)) else str(v)


def check_init_from(config: ml_collections.ConfigDict, data_shape: tuple[int, ...]) -> None:
    """Refuses (one-line ValueError) a config that contradicts the diffusers directory of model.init_from.

    The directory decides the architecture and the forward process (`diffax.interop.config_overrides`):
    every model.* key it decides must be equal; diffusion.* must give the same betas as its scheduler
    config and the same mean_type; the data must have its image shape; the variance is not learned (the
    DDPM checkpoints predict eps only; fixed_small / fixed_large and sampling.* are free). The message lists
    every contradiction and the flags that fix them (`flag_value`).
    """
    from diffax.interop import diffusers_config as hf

    path = init_from(config)
    expected = hf.config_overrides(path)
    flat = {f"{section}.{k}": v for section in ("model", "diffusion") for k, v in config[section].items()}
    norm = lambda v: tuple(v) if isinstance(v, (list, tuple)) else v  # noqa: E731
    bad = [k for k, v in expected.items() if k.startswith("model.") and norm(flat.get(k)) != norm(v)]
    if "diffusion.mean_type" in expected and flat["diffusion.mean_type"] != expected["diffusion.mean_type"]:
        bad.append("diffusion.mean_type")
    sched = hf.read_scheduler_config(path)
    if sched is not None:
        ours = np.asarray(build_schedule(config).betas, np.float64)
        if ours.shape != sched.betas.shape or not np.allclose(ours, sched.betas, rtol=1e-6, atol=0.0):
            bad += [k for k in ("diffusion.schedule", "diffusion.num_timesteps", "diffusion.beta_start",
                                "diffusion.beta_end") if k in expected]  # fmt: skip
    problems = [f"{k}={flat.get(k)!r} (checkpoint: {expected[k]!r})" for k in bad]
    want = hf.image_shape(hf.read_unet_config(path))
    if tuple(data_shape) != want:
        problems.append(f"data shape {tuple(data_shape)} (checkpoint: {want}, its sample_size and in_channels)")
    if learn_sigma(config):
        problems.append(f"diffusion.var_type={config.diffusion.var_type!r} (checkpoint: no learned variance; use "
                        "'fixed_small' or 'fixed_large')")  # fmt: skip
    if problems:
        fix = " ".join(f"--config.{k}={flag_value(expected[k])}" for k in bad)
        raise ValueError(f"model.init_from={path!r} contradicts the config: {'; '.join(problems)}"
                         + (f". Set: {fix}" if fix else ""))  # fmt: skip


def init_params(model, key: jax.Array, data_shape: tuple[int, ...]):
    """``model.init`` on a zero batch of 2 examples (t = 0; sigma = 1 for a `Preconditioned` network, whose
    c_noise is log sigma / 4), returning the 'params' collection. The values do not change the parameters
    (the initialisers see shapes only).

    Not jitted (the caller jits, e.g. together with the optimizer state, or `jax.eval_shape`s it).
    """
    k_params, k_dropout = jax.random.split(key)
    x = jnp.zeros((2,) + tuple(data_shape), jnp.float32)
    from diffax.models.preconditioned import Preconditioned

    t = jnp.ones((2,), jnp.float32) if isinstance(model, Preconditioned) else jnp.zeros((2,), jnp.int32)
    return model.init({"params": k_params, "dropout": k_dropout}, x, t, train=False)["params"]
