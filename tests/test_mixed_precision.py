"""Mixed precision: ``model.dtype='bfloat16'`` (activations bf16; parameters, EMA, optimizer state, the time
embedding, GroupNorm statistics, the attention softmax, the output and the loss float32).

- The structure, on DDPM's CIFAR-10 U-Net traced (no compile): every convolution runs in bf16, every
  reduction / exp / sin / cos / rsqrt in float32; parameters and output float32.
- Accuracy, on the same architecture at batch 2: the bf16 output is within 3% (relative L2) of float32's
  (measured 1.0%).
- A bf16 train step keeps params, EMA and Adam state float32 (the CIFAR-10 U-Net's step traced; an MLP
  step executed), and its loss at a zero output equals float32's bitwise (the loss is float32).
- gmm1d trained through the entry point with bf16 meets the float32 test's quality bounds.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from _compile import jit_once
from diffax import schedules
from diffax.models import MLP, ddpm_cifar10
from diffax.training import create_train_state, diffusion_loss_fn, make_train_step

BF16, F32 = jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float32)


def _random_params(model, x, t, seed: int = 0):
    """Random parameters of `model` without compiling its init: shapes from ``jax.eval_shape``, kernels
    N(0, 1/fan_in) (the zero-initialised layers too, so the output is not trivially 0), biases N(0, 0.1^2),
    GroupNorm scales 1 + N(0, 0.1^2)."""
    shapes = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), x, t))["params"]
    rng = np.random.default_rng(seed)

    def fill(path, s):
        name = jax.tree_util.keystr(path)
        if len(s.shape) >= 2:
            return jnp.asarray(rng.standard_normal(s.shape) / np.sqrt(np.prod(s.shape[:-1])), s.dtype)
        base = 1.0 if "scale" in name else 0.0
        return jnp.asarray(base + 0.1 * rng.standard_normal(s.shape), s.dtype)

    return jax.tree_util.tree_map_with_path(fill, shapes)


def _eqns(jaxpr):
    """All equations of a jaxpr, sub-jaxprs (pjit, custom_jvp, scan bodies) included."""
    for eqn in jaxpr.eqns:
        yield eqn
        for v in eqn.params.values():
            for sub in v if isinstance(v, (tuple, list)) else (v,):
                if isinstance(sub, jax.extend.core.ClosedJaxpr):
                    yield from _eqns(sub.jaxpr)
                elif isinstance(sub, jax.extend.core.Jaxpr):
                    yield from _eqns(sub)


def _cifar_inputs(batch: int = 2):
    x = jnp.asarray(np.random.default_rng(1).standard_normal((batch, 32, 32, 3)), jnp.float32)
    return x, jnp.asarray([10, 11][:batch], jnp.int32)


def test_bf16_unet_precision_structure_on_cifar10_architecture():
    """Traced, not compiled: convolutions in bf16; reductions (GroupNorm statistics, softmax), exp, the
    sinusoid and rsqrt in float32; every parameter float32 and the output float32."""
    x, t = _cifar_inputs(1)
    model = ddpm_cifar10(dtype="bfloat16")
    shapes = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), x, t))
    assert {leaf.dtype for leaf in jax.tree.leaves(shapes)} == {F32}
    params = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)
    closed = jax.make_jaxpr(lambda p: model.apply(p, x, t))(params)
    assert closed.out_avals[0].dtype == F32
    seen: dict[str, set] = {}
    for eqn in _eqns(closed.jaxpr):
        seen.setdefault(eqn.primitive.name, set()).update(v.aval.dtype for v in eqn.invars if hasattr(v.aval, "dtype"))
    assert seen["conv_general_dilated"] == {BF16}
    for prim in ("reduce_sum", "reduce_max", "exp", "sin", "cos", "rsqrt"):
        assert seen[prim] == {F32}, (prim, seen[prim])
    # Negative control: the float32 model has no bf16 convolution.
    closed32 = jax.make_jaxpr(lambda p: ddpm_cifar10().apply(p, x, t))(params)
    assert {v.aval.dtype for e in _eqns(closed32.jaxpr) if e.primitive.name == "conv_general_dilated"
            for v in e.invars} == {F32}  # fmt: skip


@pytest.mark.slow
def test_bf16_unet_output_close_to_float32_on_cifar10_architecture():
    """DDPM's CIFAR-10 U-Net (35.7M parameters, random weights, every layer non-zero), batch 2 with t = 10, 11.

    Tolerance: ||out_bf16 - out_f32|| / ||out_f32|| <= 0.03 per example. bf16 keeps 8 significant bits
    (unit roundoff 2^-9 = 0.002); through 30+ layers the error compounds to a measured 0.010 here (0.016
    with other inputs), so 0.03 is ~2-3x the measurement. Negative control: the float32 output at t = 11 differs from t = 10 by 0.054
    relative, outside the tolerance, so a one-step timestep error in the bf16 path would fail.
    """
    x, t = _cifar_inputs(2)
    x = x.at[1].set(x[0])  # the same image at t = 10 and t = 11
    m32, m16 = ddpm_cifar10(), ddpm_cifar10(dtype="bfloat16")
    params = _random_params(m32, x, t)

    @jax.jit
    def both(p):
        return m32.apply({"params": p}, x, t), m16.apply({"params": p}, x, t)

    o32, o16 = both(params)
    assert o16.dtype == F32

    def rel(a, b):
        return float(jnp.linalg.norm(a - b) / jnp.linalg.norm(b))

    errs = [rel(o16[i], o32[i]) for i in range(2)]
    assert max(errs) <= 0.03, errs
    assert rel(o32[1], o32[0]) > 0.03  # negative control: an off-by-one timestep is caught


def _state_and_step(model, x, tx, params=None):
    if params is None:
        params = jit_once(model.init, jax.random.PRNGKey(0), x, jnp.zeros(x.shape[0], jnp.int32))["params"]
    step = make_train_step(diffusion_loss_fn(model.apply, schedules.linear(1000)), tx, ema_decay=0.99)
    return create_train_state(params=params, tx=tx, rng=jax.random.PRNGKey(1)), step


def _float_dtypes(tree) -> set:
    return {leaf.dtype for leaf in jax.tree.leaves(tree) if jnp.issubdtype(leaf.dtype, jnp.floating)}


def test_bf16_unet_train_step_keeps_state_float32():
    """A bf16 train step of DDPM's CIFAR-10 U-Net (dropout on, Adam + EMA), traced with ``jax.eval_shape``
    (no compile): params, EMA and Adam moments of the new state are float32, and so is the loss."""
    x = jax.ShapeDtypeStruct((2, 32, 32, 3), jnp.float32)
    model = ddpm_cifar10(dtype="bfloat16")
    tx = optax.adam(2e-4)
    shapes = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), jnp.zeros(x.shape), jnp.zeros(2, jnp.int32)))
    assert _float_dtypes(shapes) == {F32}
    state = jax.eval_shape(lambda p: create_train_state(params=p, tx=tx, rng=jax.random.PRNGKey(1)), shapes["params"])
    step = make_train_step(diffusion_loss_fn(model.apply, schedules.linear(1000)), tx, ema_decay=0.9999)
    new_state, metrics = jax.eval_shape(step, state, {"x": x})
    for tree in (new_state.params, new_state.ema_params, new_state.opt_state):
        assert _float_dtypes(tree) == {F32}
    assert jax.tree.structure(new_state) == jax.tree.structure(state)
    assert metrics["loss"].dtype == F32


def test_bf16_train_step_runs_in_float32_state_and_loss():
    """One bf16 and one float32 step from the same state, key and batch (MLP on 2-D data, executed).

    The output layer's kernel is zeroed, so both models output exactly 0 (its bias is 0) at step 0 and
    the loss is mean(eps^2) of the same noise: the two losses must be equal bitwise, which holds only
    if the loss is computed in float32 (in bf16 it would be rounded to 8 bits, a relative difference
    ~1e-3). Params, EMA and Adam moments stay float32; after the step the parameters of the two runs
    agree to within 2 x lr per entry (Adam moves each entry by at most ~lr at step 1).
    """
    x = jnp.asarray(np.random.default_rng(0).standard_normal((64, 2)), jnp.float32)
    tx = optax.adam(1e-3)
    params = jit_once(MLP(hidden=32, num_layers=2).init, jax.random.PRNGKey(0), x, jnp.zeros(64, jnp.int32))["params"]
    params = dict(params, dense_out=dict(params["dense_out"], kernel=jnp.zeros_like(params["dense_out"]["kernel"])))
    out = {}
    for dtype in (F32, BF16):
        state, step = _state_and_step(MLP(hidden=32, num_layers=2, dtype=dtype), x, tx, params=params)
        out[dtype] = jax.jit(step)(state, {"x": x})
    (s32, m32), (s16, m16) = out[F32], out[BF16]
    for tree in (s16.params, s16.ema_params, s16.opt_state):
        assert _float_dtypes(tree) == {F32}
    assert m16["loss"].dtype == F32 and float(m16["loss"]) == float(m32["loss"])
    diffs = jax.tree.map(lambda a, b: float(jnp.max(jnp.abs(a - b))), s16.params, s32.params)
    assert max(jax.tree.leaves(diffs)) <= 2e-3


def test_mlp_dtype_default_unchanged_and_bf16_close():
    """MLP(dtype=None) (the default) promotes like Flax (float64 under x64); dtype='bfloat16' returns float32
    within 2% (relative L2) of float32 on a 3-layer, 64-wide network (measured ~0.3%)."""
    x = jnp.asarray(np.random.default_rng(0).standard_normal((16, 2)), jnp.float32)
    t = jnp.arange(16) * 60
    params = jit_once(MLP(hidden=64, num_layers=3).init, jax.random.PRNGKey(0), x, t)
    o32 = MLP(hidden=64, num_layers=3).apply(params, x, t)
    o16 = MLP(hidden=64, num_layers=3, dtype="bfloat16").apply(params, x, t)
    assert o32.dtype == F32 and o16.dtype == F32
    assert float(jnp.linalg.norm(o16 - o32) / jnp.linalg.norm(o32)) <= 0.02
    with jax.enable_x64(True):
        p64 = jax.tree.map(lambda a: jnp.asarray(a, jnp.float64), params)
        assert MLP(hidden=64, num_layers=3).apply(p64, x.astype(jnp.float64), t).dtype == jnp.float64


def test_builders_reject_unknown_model_dtype():
    from diffax.training import builders, presets

    config = presets.base_config()
    config.model.dtype = "float16"
    with pytest.raises(ValueError, match=r"model.dtype must be one of \['float32', 'bfloat16'\], got 'float16'"):
        builders.build_model(config, (2,))
    config.model.dtype = "bfloat16"
    assert builders.build_model(config, (2,)).dtype == BF16


@pytest.mark.slow
def test_gmm1d_bf16_meets_the_float32_quality_bounds(tmp_path):
    """configs/gmm1d.py as shipped with model.dtype='bfloat16', through the entry point (train, sample):
    the bounds of tests/test_main.py's float32 run: W1(samples, truth) <= 2.5 x the mean W1 of 2000 fresh
    data points, mode weights 0.5 +- 0.05 (see that test for their justification and negative controls)."""
    from test_main import _config, w1

    from diffax import data
    from diffax import main as main_lib
    from diffax.evaluation import toys

    config = _config("gmm1d")
    config.model.dtype = "bfloat16"  # an existing key of the locked config
    x = main_lib.run(config, str(tmp_path), ["train", "sample"])["samples"]
    truth = data.toy("gmm1d", 20_000, seed=12345)[0]
    baseline = np.mean([w1(data.toy("gmm1d", 2000, seed=100 + i)[0], truth) for i in range(20)])
    weights = toys.density_mode_weights(x, data.toy_mixture("gmm1d"))
    assert w1(x, truth) <= 2.5 * baseline, w1(x, truth) / baseline
    assert np.all(np.abs(weights - 0.5) <= 0.05), weights
