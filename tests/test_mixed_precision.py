"""Mixed precision: ``model.dtype='bfloat16'`` (activations bf16; parameters, EMA, optimizer state, the time
embedding, GroupNorm statistics, the attention softmax, the U-Net's input convolution and output head, the
output and the loss float32).

- The structure, on DDPM's CIFAR-10 U-Net traced (no compile): every convolution but the input and output
  ones runs in bf16, every reduction / exp / sin / cos / rsqrt in float32; parameters and output float32.
- Accuracy, on the same architecture at t = 0, 1, 10, 11 with data-range inputs: the bf16 output is within 3%
  (relative L2) of float32's (measured 1.0-1.4%) and not rounded to bf16; at t = 0 the input convolution sees
  the noise part of x_t unrounded (a bf16 x_t loses 18% of it).
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
from diffax.models import MLP, UNet, ddpm_cifar10
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


def _rel(a, b) -> float:
    return float(jnp.linalg.norm(a - b) / jnp.linalg.norm(b))


def _data_range_x0(size: int, channels: int) -> jax.Array:
    """Two images in [-1, 1]: an MNIST-like one (background exactly -1, a +1 ring: sharp edges, flat regions)
    and a smooth one (products of sinusoids), (2, size, size, channels)."""
    yy, xx = np.mgrid[:size, :size] / (size - 1) * 2 - 1
    ring = np.where(np.abs(np.hypot(xx, yy) - 0.55) < 0.18, 1.0, -1.0)
    smooth = np.sin(2.5 * xx + 1) * np.cos(1.7 * yy)
    return jnp.asarray(np.stack([np.stack([ring] * channels, -1), np.stack([smooth] * channels, -1)]), jnp.float32)


def _noisy(x0: jax.Array, t: jax.Array, seed: int) -> jax.Array:
    """x_t = sqrt(alpha-bar_t) x0 + sqrt(1 - alpha-bar_t) eps under DDPM's linear schedule (T = 1000)."""
    acp = schedules.linear(1000).alphas_cumprod[t][:, None, None, None]
    eps = jnp.asarray(np.random.default_rng(seed).standard_normal(x0.shape), jnp.float32)
    return jnp.sqrt(acp) * x0 + jnp.sqrt(1.0 - acp) * eps


def _compile_rounding(fn, *args):
    """``jax.jit(fn)(*args)`` with XLA's excess precision off: every bf16 value is rounded, as on a GPU/TPU.
    (XLA's CPU backend emulates bf16 in float32 and may otherwise drop the f32 -> bf16 -> f32 round trips.)"""
    return jax.jit(fn).lower(*args).compile(compiler_options={"xla_allow_excess_precision": False})(*args)


@pytest.mark.slow
def test_bf16_unet_input_convolution_sees_the_unrounded_noise():
    """At t = 0 (b_0 = 0.01) the noise is 1% of x_t, and rounding x_t to bf16 (unit roundoff 2^-8 on values
    near +-1) destroys a large part of it. The bf16 U-Net's input convolution must see x_t in float32.

    Setting (scaled-down U-Net, random weights): the input kernel made zero-sum with zero bias, so it cancels
    the image's flat background (what an eps-predictor must do at small t) and its output there is
    b_0 (w * eps), pure noise; the image is `_data_range_x0`'s MNIST-like ring. Tolerance: the bf16 model's
    conv_in output is within 2^-8 (relative RMS: one bf16 rounding, the cast after it) of the float32
    model's on the flat background (measured 0: it is computed in float32). Negative control, computed: the same
    convolution of bf16-rounded x_t (the old input path) is off by more than 10x the tolerance there (measured
    0.18; the old bf16 model: 0.23). The output is float32, not rounded to bf16, and within 0.03 of float32's
    (measured 0.012).
    """
    x0 = _data_range_x0(16, 3)[:1]
    t = jnp.zeros(1, jnp.int32)
    x = _noisy(x0, t, seed=2)
    kw = dict(ch=32, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(8,), num_groups=8, dropout=0.0)
    m32, m16 = UNet(**kw), UNet(**kw, dtype="bfloat16")
    params = _random_params(m32, x, t)
    kernel = params["conv_in"]["kernel"]
    params["conv_in"] = {"kernel": kernel - kernel.mean(axis=(0, 1, 2), keepdims=True),
                         "bias": jnp.zeros_like(params["conv_in"]["bias"])}

    def run(model, p, xx):
        out, inter = model.apply({"params": p}, xx, t, capture_intermediates=lambda m, _: m.name == "conv_in",
                                 mutable=["intermediates"])
        return out, inter["intermediates"]["conv_in"]["__call__"][0]

    (o32, h32), (o16, h16), (_, h_rounded_input) = _compile_rounding(
        lambda p: (run(m32, p, x), run(m16, p, x), run(m32, p, x.astype(jnp.bfloat16).astype(F32))), params)
    # The flat background: pixels whose 3x3 window (inside the image: no zero padding) is constant in x0.
    img = np.asarray(x0[0, :, :, 0])
    windows = np.lib.stride_tricks.sliding_window_view(img, (3, 3))
    flat = np.zeros(img.shape, bool)
    flat[1:-1, 1:-1] = windows.min(axis=(2, 3)) == windows.max(axis=(2, 3))
    assert flat.sum() >= 50
    noise32, noise16, noise_rounded = (h[0][flat] for h in (h32, h16.astype(F32), h_rounded_input))
    assert _rel(noise16, noise32) <= 2.0**-8, _rel(noise16, noise32)
    assert _rel(noise_rounded, noise32) > 10 * 2.0**-8, _rel(noise_rounded, noise32)  # negative control
    assert o16.dtype == F32 and not bool(jnp.all(o16.astype(jnp.bfloat16).astype(F32) == o16))
    assert _rel(o16, o32) <= 0.03  # as the CIFAR-10 architecture test


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
    # The input convolution (first) and the output conv (last) run in float32, every other one in bf16.
    convs = [{v.aval.dtype for v in e.invars} for e in _eqns(closed.jaxpr)
             if e.primitive.name == "conv_general_dilated"]
    assert convs[0] == convs[-1] == {F32} and all(c == {BF16} for c in convs[1:-1]), convs
    for prim in ("reduce_sum", "reduce_max", "exp", "sin", "cos", "rsqrt"):
        assert seen[prim] == {F32}, (prim, seen[prim])
    # Negative control: the float32 model has no bf16 convolution.
    closed32 = jax.make_jaxpr(lambda p: ddpm_cifar10().apply(p, x, t))(params)
    assert {v.aval.dtype for e in _eqns(closed32.jaxpr) if e.primitive.name == "conv_general_dilated"
            for v in e.invars} == {F32}  # fmt: skip


@pytest.mark.slow
def test_bf16_unet_output_close_to_float32_on_cifar10_architecture():
    """DDPM's CIFAR-10 U-Net (35.7M parameters, random weights, every layer non-zero) on data-range inputs
    x_t = a_t x0 + b_t eps (x0 in [-1, 1]: `_data_range_x0`), each at t and t + 1 for t = 0 and 10.

    The output is float32 and not rounded to bf16 (some value is not bf16-representable: the output head runs
    in float32; the old bf16 head made every value representable). Compiled with excess precision off, so every
    bf16 value is rounded as on an accelerator (`_compile_rounding`).
    Tolerance: ||out_bf16 - out_f32|| / ||out_f32|| <= 0.03 per example. bf16 keeps 8 significant bits
    (unit roundoff 2^-8); through 30+ layers the error compounds to a measured 0.010-0.014 on these inputs
    (0.010-0.016 on Gaussian inputs at t = 10), so 0.03 is ~2-3x the measurement. Random weights do not amplify
    the noise part of x_t as a trained eps-predictor does (x 1/b_t), so this error hardly depends on t (before
    float32 input/output layers: 0.012-0.015): `test_bf16_unet_input_convolution_sees_the_unrounded_noise`
    and experiments/bf16_error.py (a trained U-Net) see the small-t loss. Negative control: the float32
    output at t + 1 differs from t by more than 0.03 relative (measured 0.063 at t = 0, 0.086 at t = 10), so
    a one-step timestep error in the bf16 path would fail.
    """
    t = jnp.asarray([0, 1, 10, 11], jnp.int32)
    x0 = _data_range_x0(32, 3)
    x = jnp.concatenate([_noisy(x0[:1], t[:1], seed=3)] * 2 + [_noisy(x0[1:], t[2:3], seed=3)] * 2)
    m32, m16 = ddpm_cifar10(), ddpm_cifar10(dtype="bfloat16")
    params = _random_params(m32, x, t)
    o32, o16 = _compile_rounding(lambda p: (m32.apply({"params": p}, x, t), m16.apply({"params": p}, x, t)), params)
    assert o16.dtype == F32
    assert not bool(jnp.all(o16.astype(jnp.bfloat16).astype(F32) == o16))
    errs = [_rel(o16[i], o32[i]) for i in range(4)]
    assert max(errs) <= 0.03, errs
    assert min(_rel(o32[1], o32[0]), _rel(o32[3], o32[2])) > 0.03  # negative control: off-by-one timesteps


def _state_and_step(model, x, tx, params=None):
    if params is None:
        params = jit_once(model.init, jax.random.PRNGKey(0), x, jnp.zeros(x.shape[0], jnp.int32))["params"]
    step = make_train_step(diffusion_loss_fn(model.apply, schedules.linear(1000)), tx, ema_decay=0.99)
    return create_train_state(params=params, tx=tx, rng=jax.random.PRNGKey(1)), step


def _float_dtypes(tree) -> set:
    return {leaf.dtype for leaf in jax.tree.leaves(tree) if jnp.issubdtype(leaf.dtype, jnp.floating)}


@pytest.mark.slow
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


@pytest.mark.slow
def test_bf16_train_step_runs_in_float32_state_and_loss():
    """One bf16 and one float32 step from the same state, key and batch (MLP on 2-D data, executed).

    The output layer's kernel is zeroed, so both models output exactly 0 (its bias is 0) at step 0 and
    the loss is mean(eps^2) of the same noise: the two losses must be equal bitwise, which holds only
    if the loss is computed in float32 (in bf16 it would be rounded to 8 bits, a relative difference
    ~1e-3). Params, EMA and Adam moments stay float32.
    The updates agree: ||update_bf16 - update_f32|| <= 0.01 ||update_f32|| for the parameters, the EMA and
    Adam's first moment (update = new - initial; at step 1 only the output layer moves, 66 entries). The bf16
    gradient differs by about one bf16 rounding of the hidden activations (unit roundoff 2^-8 = 0.004):
    measured 2.9e-3 for the first moment, 1e-7 for params and EMA (Adam's first step is ~lr sign(g)).
    Negative control: a state that was not updated (update 0) is off by 1.0 relative, outside (and a step that
    updates nothing at all gives 0/0 = nan, which fails too).
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
    state0, _ = _state_and_step(MLP(hidden=32, num_layers=2), x, tx, params=params)

    def update_error(new16, new32, old) -> float:
        """||(new16 - old) - (new32 - old)|| / ||new32 - old|| over all leaves."""
        flat = lambda tree: jnp.concatenate([jnp.ravel(a) for a in jax.tree.leaves(tree)])  # noqa: E731
        return _rel(flat(new16) - flat(old), flat(new32) - flat(old))

    for get in (lambda s: s.params, lambda s: s.ema_params, lambda s: s.opt_state[0].mu):
        assert update_error(get(s16), get(s32), get(state0)) <= 0.01, update_error(get(s16), get(s32), get(state0))
        assert update_error(get(state0), get(s32), get(state0)) > 0.01  # negative control: no update


@pytest.mark.slow
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
    from diffax.training import model_builders, presets

    config = presets.base_config()
    config.model.dtype = "float16"
    with pytest.raises(ValueError, match=r"unknown model.dtype 'float16'; allowed: \['float32', 'bfloat16'\]"):
        model_builders.build_model(config, (2,))
    config.model.dtype = "bfloat16"
    assert model_builders.build_model(config, (2,)).dtype == BF16


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
