"""Tests of diffax.models: parameter counts against the papers, shapes, the DDPM timestep embedding,
zero-init, dropout, class/null conditioning, attention against an independent numpy reference.

Shapes and parameter counts use ``jax.eval_shape`` (no compile, no allocation); forward passes use
one tiny class-conditional U-Net whose jitted apply is shared by the tests (few compiles).
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from _compile import jit_once
from diffax.models import MLP, AttnBlock, Classifier, UNet, ddpm_256, ddpm_cifar10, timestep_embedding
from diffax.models.layers import num_groups_for


def _n_params(tree) -> int:
    return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(tree))


def _abstract_init(model, *args, **kwargs):
    return jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), *args, **kwargs))


def _perturb(params, seed, scale=0.05):
    """Adds N(0, scale^2) noise to every parameter (breaks the exact zero-init so outputs depend on inputs).

    Done in numpy on the host: no per-shape XLA compiles.
    """
    rng = np.random.default_rng(seed)
    def one(p):
        base = np.zeros(p.shape, p.dtype) if isinstance(p, jax.ShapeDtypeStruct) else np.asarray(p)
        return base + scale * rng.standard_normal(p.shape).astype(p.dtype)
    return jax.tree.map(one, params)


def _fast_key(seed):
    # The RngBitGenerator-based key compiles much faster on CPU than threefry for a whole model's init.
    return jax.random.key(seed, impl="unsafe_rbg")


# ---------------------------------------------------------------- parameter counts (papers)

@pytest.mark.slow
def test_ddpm_cifar10_parameter_count():
    # Ho et al. 2020, sec. 4: "Our CIFAR10 model has 35.7 million parameters"; the official TF code's
    # count for this configuration is 35,746,307.
    n = _n_params(_abstract_init(ddpm_cifar10(), jnp.zeros((1, 32, 32, 3)), jnp.zeros((1,), jnp.int32)))
    assert abs(n - 35.7e6) <= 0.1e6
    assert n == 35_746_307


def test_ddpm_256_parameter_count():
    # Ho et al. 2020, sec. 4: "our LSUN and CelebA-HQ models have 114 million parameters" (rounded to 1M).
    n = _n_params(_abstract_init(ddpm_256(), jnp.zeros((1, 256, 256, 3)), jnp.zeros((1,), jnp.int32)))
    assert abs(n - 114e6) <= 0.5e6


# ---------------------------------------------------------------- timestep embedding

def _ddpm_embedding_numpy(t, dim):
    """DDPM's get_timestep_embedding, written independently in float64 numpy."""
    half = dim // 2
    freqs = np.exp(-np.log(10000.0) * np.arange(half) / (half - 1))
    args = np.asarray(t, np.float64)[:, None] * freqs[None]
    emb = np.concatenate([np.sin(args), np.cos(args)], axis=1)
    return np.pad(emb, ((0, 0), (0, dim % 2)))


@pytest.mark.parametrize("dim", [7, 64])
def test_timestep_embedding_matches_ddpm_formula_x64(x64, dim):
    t = np.array([0.0, 1.0, 17.5, 999.0, 0.25])  # float t (e.g. a scaled noise level) included
    got = np.asarray(timestep_embedding(jnp.asarray(t), dim))
    assert got.dtype == np.float64 and got.shape == (5, dim)
    np.testing.assert_allclose(got, _ddpm_embedding_numpy(t, dim), rtol=0, atol=1e-12)


def test_timestep_embedding_float32_int_t():
    t = np.array([0, 5, 500, 999])
    got = np.asarray(timestep_embedding(jnp.asarray(t, jnp.int32), 128))
    # float32: the argument t * freq carries relative error ~6e-8, i.e. <= 999 * 6e-8 ≈ 6e-5 absolute.
    np.testing.assert_allclose(got, _ddpm_embedding_numpy(t, 128), rtol=0, atol=2e-4)


def test_timestep_embedding_rejects_small_dim():
    with pytest.raises(ValueError, match="dim"):
        timestep_embedding(jnp.zeros((2,)), 3)


def test_num_groups_for():
    # 32 groups for DDPM's widths; small widths keep >= 2 channels per group.
    assert [num_groups_for(c) for c in (128, 256, 64, 48, 16, 3, 1)] == [32, 32, 32, 24, 8, 1, 1]


# ---------------------------------------------------------------- UNet shapes (abstract)

@pytest.mark.parametrize("kwargs,out_channels", [
    (dict(), 3),
    (dict(learn_sigma=True), 6),
    (dict(out_ch=1, learn_sigma=True), 2),
    (dict(num_classes=10), 3),
    (dict(resblock_updown=True, use_scale_shift_norm=True, num_head_channels=8, resamp_with_conv=False), 3),
])
def test_unet_output_shape(kwargs, out_channels):
    model = UNet(ch=16, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(4,), **kwargs)
    x, t = jnp.zeros((2, 8, 8, 3)), jnp.zeros((2,), jnp.int32)
    params = _abstract_init(model, x, t)
    out = jax.eval_shape(lambda p: model.apply(p, x, t), params)
    assert out.shape == (2, 8, 8, out_channels) and out.dtype == jnp.float32


def test_unet_class_embedding_has_null_row():
    model = UNet(ch=16, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(), num_classes=10)
    params = _abstract_init(model, jnp.zeros((1, 8, 8, 3)), jnp.zeros((1,), jnp.int32))
    assert params["params"]["label_emb"]["embedding"].shape == (11, 64)  # 10 classes + null, width 4*ch


@pytest.mark.parametrize("kwargs,x_shape,y", [
    (dict(), (1, 8, 8, 3), jnp.zeros((1,), jnp.int32)),          # y for an unconditional model
    (dict(ch_mult=(1, 2, 2)), (1, 6, 6, 3), None),                 # H not divisible by 4
    (dict(num_heads=3, attn_resolutions=(8,)), (1, 8, 8, 3), None),  # 3 heads do not divide 16 channels
    (dict(), (8, 8, 3), None),                                     # not NHWC
])
def test_unet_rejects_bad_input(kwargs, x_shape, y):
    model = UNet(**{**dict(ch=16, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=()), **kwargs})
    with pytest.raises(ValueError):
        _abstract_init(model, jnp.zeros(x_shape), jnp.zeros((1,), jnp.int32), y)


# ---------------------------------------------------------------- UNet forward (one tiny model)

TINY = UNet(ch=16, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(4,), dropout=0.3, num_classes=3)
_tiny_apply = jax.jit(TINY.apply, static_argnames=("train",))


@pytest.fixture(scope="module")
def tiny():
    x = jnp.asarray(np.random.default_rng(0).standard_normal((2, 8, 8, 3)), jnp.float32)
    t = jnp.array([3, 900], jnp.int32)
    y = jnp.array([0, 2], jnp.int32)
    params = jax.jit(TINY.init)(_fast_key(0), x, t, y)
    return dict(x=x, t=t, y=y, params=params, perturbed=_perturb(params, 1))


def _run(tiny, params, y="default", train=False, key=1):
    """The tiny UNet's jitted apply; always passes a dropout key so train=False shares one compile."""
    y = tiny["y"] if isinstance(y, str) else y
    return np.asarray(_tiny_apply(params, tiny["x"], tiny["t"], y, train=train, rngs={"dropout": _fast_key(key)}))


def test_unet_zero_init_output_is_exactly_zero(tiny):
    # DDPM initializes conv_out with init_scale 0: the initial prediction is exactly 0 for any input.
    assert np.all(_run(tiny, tiny["params"]) == 0.0)
    # Negative control: with all weights perturbed the same call is no longer zero.
    assert np.max(np.abs(_run(tiny, tiny["perturbed"]))) > 1e-3


def test_unet_dropout_only_in_train_mode(tiny):
    p = tiny["perturbed"]
    ev1, ev2 = _run(tiny, p, key=1), _run(tiny, p, key=2)
    np.testing.assert_array_equal(ev1, ev2)  # eval: deterministic, the key is ignored
    tr1, tr1b, tr2 = (_run(tiny, p, train=True, key=k) for k in (1, 1, 2))
    np.testing.assert_array_equal(tr1, tr1b)  # same key -> bitwise same
    assert np.max(np.abs(tr1 - tr2)) > 1e-4  # different keys -> different masks
    assert np.max(np.abs(tr1 - ev1)) > 1e-4


def test_unet_null_class(tiny):
    p = tiny["perturbed"]
    real = _run(tiny, p)
    null = _run(tiny, p, y=jnp.full((2,), TINY.num_classes, jnp.int32))
    np.testing.assert_array_equal(_run(tiny, p, y=None), null)  # y=None is the null label num_classes
    assert np.min(np.max(np.abs(real - null), axis=(1, 2, 3))) > 1e-4  # the label changes each output


def test_unet_accepts_float_and_scalar_t():
    # A float t (e.g. a scaled noise level, NCSN-style) and a scalar t are accepted (checked abstractly;
    # the embedding itself is checked against DDPM's formula for float t above).
    x = jax.ShapeDtypeStruct((2, 8, 8, 3), jnp.float32)
    params = _abstract_init(TINY, jnp.zeros(x.shape), jnp.zeros((2,), jnp.int32))
    for t in (jax.ShapeDtypeStruct((2,), jnp.float32), jax.ShapeDtypeStruct((), jnp.float32)):
        out = jax.eval_shape(lambda p, x, t: TINY.apply(p, x, t), params, x, t)
        assert out.shape == (2, 8, 8, 3) and out.dtype == jnp.float32


# ---------------------------------------------------------------- attention vs numpy reference

def test_attention_matches_numpy_reference():
    b, h, w, c, heads = 2, 3, 4, 8, 2
    x = jnp.asarray(np.random.default_rng(0).standard_normal((b, h, w, c)), jnp.float32)
    block = AttnBlock(num_heads=heads, num_groups=4)
    params = _perturb(jax.eval_shape(block.init, jax.random.PRNGKey(1), x), 2, scale=0.3)  # random weights
    got = np.asarray(jax.jit(block.apply)(params, x))

    p = jax.tree.map(np.asarray, params["params"])
    xn = np.asarray(x, np.float64)
    g = xn.reshape(b, h * w, 4, c // 4)  # GroupNorm with 4 groups, eps 1e-6
    g = (g - g.mean(axis=(1, 3), keepdims=True)) / np.sqrt(g.var(axis=(1, 3), keepdims=True) + 1e-6)
    g = g.reshape(b, h * w, c) * p["norm"]["scale"] + p["norm"]["bias"]
    q, k, v = (g @ p[n]["kernel"] + p[n]["bias"] for n in ("q", "k", "v"))
    d = c // heads
    out = np.zeros_like(q)
    for i in range(heads):
        s = slice(i * d, (i + 1) * d)
        logits = np.einsum("bqd,bkd->bqk", q[..., s], k[..., s]) / math.sqrt(d)
        wts = np.exp(logits - logits.max(-1, keepdims=True))
        out[..., s] = (wts / wts.sum(-1, keepdims=True)) @ v[..., s]
    ref = xn + (out @ p["proj_out"]["kernel"] + p["proj_out"]["bias"]).reshape(b, h, w, c)
    np.testing.assert_allclose(got, ref, rtol=0, atol=1e-4)  # float32 vs float64 reference


# ---------------------------------------------------------------- skip_rescale (score_sde's NCSN++ / DDPM++)

_SQRT2 = np.sqrt(2.0)  # score_sde divides by np.sqrt(2.) (models/layerspp.py)


def _captured(block, params, *args):
    """``block.apply`` with every submodule's output captured (flax ``capture_intermediates``)."""
    out, state = jax.jit(lambda p, *a: block.apply(p, *a, capture_intermediates=True))(params, *args)
    return np.asarray(out), jax.tree.map(np.asarray, state["intermediates"])


def _assert_same_tree(a, b):
    assert jax.tree.structure(a) == jax.tree.structure(b)
    assert all(jax.tree.leaves(jax.tree.map(lambda u, v: u.shape == v.shape and np.array_equal(u, v), a, b)))


@pytest.mark.parametrize("kw", [dict(), dict(down=True, use_scale_shift_norm=True), dict(up=True)])
def test_resblock_skip_rescale_divides_the_residual_sum_by_sqrt2(kw):
    """ResBlock(skip_rescale=True): the same parameters as without it, and out = (skip(x) + h) / sqrt(2) with
    skip(x) = the nin_shortcut's output and h = conv2's output, both read from the block itself, to float32
    rounding (rtol 1e-6 ~ 8 ulp; the same two ops, so in practice bitwise). Without the option, out = skip(x) + h
    (which identifies the captured internals). Negative controls: the unscaled sum, and the sum divided by
    1.4142 (a 1e-5 relative error), both fail the tolerance. Also the BigGAN up/down blocks (resblock_updown),
    rescaled by score_sde's ResnetBlockBigGANpp as well."""
    from diffax.models.layers import ResBlock

    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.standard_normal((2, 8, 8, 8)), jnp.float32)
    temb = jnp.asarray(rng.standard_normal((2, 32)), jnp.float32)
    off, on = (ResBlock(out_ch=16, num_groups=4, skip_rescale=r, **kw) for r in (False, True))
    p_off, p_on = (jax.jit(m.init)(jax.random.PRNGKey(0), x, temb) for m in (off, on))
    _assert_same_tree(p_off, p_on)  # no parameter added, same initial values
    params = _perturb(p_off, 4, scale=0.2)  # conv2 is zero-initialized: make h non-zero
    for block, scale in ((off, 1.0), (on, _SQRT2)):
        out, inter = _captured(block, params, x, temb)
        skip, h = inter["nin_shortcut"]["__call__"][0], inter["conv2"]["__call__"][0]
        assert np.max(np.abs(h)) > 0.1 and np.max(np.abs(skip)) > 0.1
        np.testing.assert_allclose(out, (skip + h) / np.float32(scale), rtol=1e-6, atol=1e-7)
    for wrong in (skip + h, (skip + h) / np.float32(1.4142)):  # out is the rescaled block's
        assert not np.allclose(out, wrong, rtol=1e-6, atol=1e-7)


def test_attnblock_skip_rescale_divides_the_residual_sum_by_sqrt2():
    """AttnBlock(skip_rescale=True) (score_sde's AttnBlockpp): the same parameters, out = (x + h) / sqrt(2) with
    h = proj_out's output read from the block, to float32 rounding (rtol 1e-6); without it out = x + h.
    Negative controls: x + h, and (x + h) / 1.4142, fail."""
    rng = np.random.default_rng(1)
    x = jnp.asarray(rng.standard_normal((2, 4, 4, 8)), jnp.float32)
    off, on = (AttnBlock(num_heads=2, num_groups=4, skip_rescale=r) for r in (False, True))
    p_off, p_on = (jax.jit(m.init)(jax.random.PRNGKey(0), x) for m in (off, on))
    _assert_same_tree(p_off, p_on)
    params = _perturb(p_off, 5, scale=0.3)  # proj_out is zero-initialized
    xn = np.asarray(x)
    for block, scale in ((off, 1.0), (on, _SQRT2)):
        out, inter = _captured(block, params, x)
        h = inter["proj_out"]["__call__"][0]
        assert np.max(np.abs(h)) > 0.1
        np.testing.assert_allclose(out, (xn + h) / np.float32(scale), rtol=1e-6, atol=1e-7)
    for wrong in (xn + h, (xn + h) / np.float32(1.4142)):
        assert not np.allclose(out, wrong, rtol=1e-6, atol=1e-7)


def _block_flags(model, params, x, t):
    """(type name, skip_rescale) of every ResBlock / AttnBlock call in one forward pass of ``model``."""
    import flax.linen as nn

    from diffax.models.layers import ResBlock

    seen = []

    def record(next_fun, args, kwargs, context):
        if context.method_name == "__call__" and isinstance(context.module, (ResBlock, AttnBlock)):
            seen.append((type(context.module).__name__, context.module.skip_rescale))
        return next_fun(*args, **kwargs)

    with nn.intercept_methods(record):
        out = model.apply(params, x, t)
    return out, seen


@pytest.mark.slow
def test_unet_skip_rescale_same_parameters_every_block_rescaled_default_unchanged():
    """UNet(skip_rescale=...): the parameter tree (structure and initial values) is that of the default UNet
    either way; with False the outputs are bitwise the default UNet's; with True every ResBlock (including the
    resblock_updown up/down blocks) and every AttnBlock runs with skip_rescale (counted: 2 + 1 down, 4 + 1 up and
    2 mid ResBlocks; 1 down, 2 up and 1 mid AttnBlocks at 4x4), and the output changes (> 1e-3)."""
    kw = dict(ch=16, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(4,), num_groups=4, resblock_updown=True)
    rng = np.random.default_rng(2)
    x = jnp.asarray(rng.standard_normal((2, 8, 8, 3)), jnp.float32)
    t = jnp.array([3, 900], jnp.int32)
    default, off, on = UNet(**kw), UNet(**kw, skip_rescale=False), UNet(**kw, skip_rescale=True)
    p_default = jit_once(default.init, jax.random.PRNGKey(0), x, t)
    for m in (off, on):
        _assert_same_tree(p_default, jit_once(m.init, jax.random.PRNGKey(0), x, t))
    params = _perturb(p_default, 6)
    out_default, flags_default = _block_flags(default, params, x, t)
    out_off, _ = _block_flags(off, params, x, t)
    out_on, flags_on = _block_flags(on, params, x, t)
    np.testing.assert_array_equal(np.asarray(out_off), np.asarray(out_default))
    kinds = sorted(k for k, _ in flags_on)
    assert kinds.count("ResBlock") == 10 and kinds.count("AttnBlock") == 4
    assert all(f for _, f in flags_on) and not any(f for _, f in flags_default)
    assert float(jnp.max(jnp.abs(out_on - out_off))) > 1e-3


def test_skip_rescale_through_the_builders_and_the_run_checks():
    """model.skip_rescale (a model.* key of the schema, False in the presets) reaches the UNet through
    `model_builders.build_model`; a run trained with one value is refused for resume / sample / eval with the
    other (`restore.check_compatible` names the key; a run saved before the key compares as False); and a diffusers directory (model.init_from, whose
    UNet2DModel resnets have output_scale_factor 1) is refused with skip_rescale=True by `check_init_from`."""
    import os

    from diffax.interop import config_overrides
    from diffax.training import model_builders, presets, restore

    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    config = presets.load_config(os.path.join(repo, "configs", "mnist.py") + ":tiny")
    assert config.model.skip_rescale is False
    assert model_builders.build_model(config, (28, 28, 1)).skip_rescale is False
    saved = config.to_dict()
    config.model.skip_rescale = True
    model = model_builders.build_model(config, (28, 28, 1))
    assert isinstance(model, UNet) and model.skip_rescale is True
    for purpose in ("resume", "sample", "eval"):
        restore.check_compatible(config.to_dict(), config.to_dict(), purpose=purpose)  # same value: no error
        with pytest.raises(ValueError, match=r"model\.skip_rescale: run False vs now True"):
            restore.check_compatible(saved, config.to_dict(), purpose=purpose)
        # A run saved before the key existed was built without rescaling: it compares as False, not skipped.
        older = {**saved, "model": {k: v for k, v in saved["model"].items() if k != "skip_rescale"}}
        restore.check_compatible(older, saved, purpose=purpose)
        with pytest.raises(ValueError, match=r"model\.skip_rescale: run False vs now True"):
            restore.check_compatible(older, config.to_dict(), purpose=purpose)

    fixture = os.path.join(repo, "tests", "fixtures", "diffusers", "ddpm_cifar10_tiny")
    cifar = presets.load_config(os.path.join(repo, "configs", "cifar10.py"))
    for k, v in config_overrides(fixture).items():
        section, key = k.split(".")
        cifar[section][key] = v
    cifar.model.init_from = fixture
    assert model_builders.build_model(cifar, (32, 32, 3)).skip_rescale is False  # agrees
    cifar.model.skip_rescale = True
    with pytest.raises(ValueError, match=r"model\.skip_rescale=True \(checkpoint: False\).*--config\.model\."
                                         r"skip_rescale=False"):
        model_builders.build_model(cifar, (32, 32, 3))


# ---------------------------------------------------------------- convolutions: fast paths equal nn.Conv


def _conv_loss(module, params, x):
    return jnp.sum(jnp.sin(module.apply(params, x)))  # a non-trivial cotangent


def test_conv_fast_paths_equal_flax_conv():
    """`layers.conv` for a 1x1 kernel (`layers.Conv1x1`, a channel matmul) against ``nn.Conv``:
    the same parameter tree and initial values, the forward and the input gradient bitwise, the
    kernel gradient to float32 rounding (relative 1e-5 of its largest entry: a different summation order
    of the same 8*8*2 products), and forward-mode jvp in x equal to the forward (the conv is linear in x)."""
    import flax.linen as nn

    from diffax.models.layers import conv, default_init

    x = jnp.asarray(np.random.default_rng(0).standard_normal((2, 8, 8, 16)), jnp.float32)
    fast = conv(24, 1, name="c")
    ref = nn.Conv(24, (1, 1), padding="SAME", kernel_init=default_init(1.0), name="c")
    params = ref.init(jax.random.PRNGKey(0), x)
    p_fast = fast.init(jax.random.PRNGKey(0), x)
    assert jax.tree.structure(p_fast) == jax.tree.structure(params)
    assert all(jax.tree.leaves(jax.tree.map(lambda a, b: bool(jnp.array_equal(a, b)), p_fast, params)))
    params = _perturb(params, 3, scale=0.1)  # a non-zero bias
    assert jnp.array_equal(jax.jit(fast.apply)(params, x), jax.jit(ref.apply)(params, x))
    (gp_fast, gx_fast), (gp_ref, gx_ref) = (
        jax.jit(jax.grad(functools.partial(_conv_loss, m), argnums=(0, 1)))(params, x) for m in (fast, ref))
    assert jnp.array_equal(gx_fast, gx_ref)
    k_fast, k_ref = gp_fast["params"]["kernel"], gp_ref["params"]["kernel"]
    assert float(jnp.max(jnp.abs(k_fast - k_ref))) <= 1e-5 * float(jnp.max(jnp.abs(k_ref)))
    np.testing.assert_array_equal(gp_fast["params"]["bias"], gp_ref["params"]["bias"])
    jv = jax.jvp(lambda z: fast.apply(params, z), (x,), (x,))[1]
    np.testing.assert_allclose(jv, ref.apply(params, x) - params["params"]["bias"], rtol=0, atol=1e-5)
    # Negative control: a kernel gradient with its input channels shifted by one is far outside the tolerance.
    assert float(jnp.max(jnp.abs(jnp.roll(k_ref, 1, axis=2) - k_ref))) > 1e-2 * float(jnp.max(jnp.abs(k_ref)))


# ---------------------------------------------------------------- MLP

def test_mlp_time_conditioning_float_t_and_learn_sigma():
    model = MLP(hidden=32, num_layers=2, learn_sigma=True)
    x = jnp.asarray(np.random.default_rng(0).standard_normal((4, 2)), jnp.float32)
    t_int = jnp.array([0, 10, 500, 999], jnp.int32)
    params = jit_once(model.init, _fast_key(1), x, t_int)
    apply = jax.jit(model.apply)
    out_int = apply(params, x, t_int)
    out_float = apply(params, x, t_int.astype(jnp.float32))
    assert out_int.shape == (4, 4)  # learn_sigma doubles D = 2
    np.testing.assert_allclose(out_float, out_int, rtol=0, atol=1e-6)  # same values, int vs float path
    shifted = apply(params, x, t_int.astype(jnp.float32) + 0.5)
    assert np.min(np.max(np.abs(np.asarray(shifted - out_int)), axis=1)) > 1e-5  # t conditions each row


def test_mlp_without_t_is_a_per_example_function():
    # t=None: a plain score model s(x) (exact / sliced score matching) — no time parameters, and each
    # output row depends only on its own input row (vmap over single examples gives the batch result).
    model = MLP(hidden=32, num_layers=2, activation="softplus")
    x = jnp.asarray(np.random.default_rng(0).standard_normal((5, 3)), jnp.float32)
    params = jit_once(model.init, _fast_key(1), x)
    assert not any("temb" in k for k in params["params"])
    batched, single = jax.jit(lambda p: (model.apply(p, x), jax.vmap(lambda xi: model.apply(p, xi[None])[0])(x)))(params)
    assert batched.shape == (5, 3)
    np.testing.assert_allclose(batched, single, rtol=1e-6, atol=1e-6)


def test_mlp_class_conditional_null_label():
    model = MLP(hidden=16, num_layers=1, num_classes=2)
    x, t = jnp.ones((2, 2)), jnp.array([1, 2])
    params = jit_once(model.init, _fast_key(0), x, t)
    assert params["params"]["label_emb"]["embedding"].shape == (3, 16)
    none, null, real = jax.jit(lambda p: (model.apply(p, x, t), model.apply(p, x, t, jnp.array([2, 2])),
                                          model.apply(p, x, t, jnp.array([0, 0]))))(params)
    np.testing.assert_array_equal(none, null)  # y=None is the null label
    assert np.max(np.abs(np.asarray(real - null))) > 1e-5


def test_mlp_rejects_bad_activation():
    with pytest.raises(ValueError, match="activation"):
        MLP(activation="swishy").init(jax.random.PRNGKey(0), jnp.zeros((1, 2)))


# ---------------------------------------------------------------- Classifier

def test_classifier_image_shapes_abstract():
    model = Classifier(num_classes=10, ch=16, ch_mult=(1, 2), time_conditional=True)
    x, t = jnp.zeros((3, 28, 28, 1)), jnp.zeros((3,), jnp.int32)
    params = _abstract_init(model, x, t)
    logits, feats = jax.eval_shape(lambda p: model.apply(p, x, t, return_features=True), params)
    assert logits.shape == (3, 10) and feats.shape == (3, 32)
    with pytest.raises(ValueError, match="needs t"):
        _abstract_init(model, x)


def test_classifier_vector_logits_are_linear_in_features_and_depend_on_t():
    model = Classifier(num_classes=4, hidden=32, num_layers=2, time_conditional=True)
    x = jnp.asarray(np.random.default_rng(0).standard_normal((5, 2)), jnp.float32)
    t = jnp.array([0, 100, 200, 300, 999])
    params = jit_once(model.init, _fast_key(1), x, t)
    apply = jax.jit(model.apply, static_argnames=("return_features",))
    logits, feats = apply(params, x, t, return_features=True)
    assert logits.shape == (5, 4) and feats.shape == (5, 32)
    w = params["params"]["logits"]
    np.testing.assert_allclose(logits, feats @ w["kernel"] + w["bias"], rtol=1e-5, atol=1e-5)
    logits_t, _ = apply(params, x, t + 50, return_features=True)
    assert np.min(np.max(np.abs(np.asarray(logits_t - logits)), axis=1)) > 1e-5  # noise-aware


# ---------------------------------------------------------------- FID Inception-v3

@functools.lru_cache(maxsize=1)
def _inception_abstract():
    from diffax.models.inception import InceptionV3
    model = InceptionV3()
    x = jnp.zeros((2, 32, 32, 3))
    variables = _abstract_init(model, x)
    return model, x, variables


def test_inception_shapes_and_parameter_count():
    # torchvision documents Inception_V3 (aux head, 1000 classes) with num_params = 27,161,264. The FID
    # network drops the aux head (conv0 768->128 1x1 + BN, conv1 128->768 5x5 + BN, fc 768->1000) and
    # has 1008 classes (+8 rows of the 2048-d fc). Trainable = conv kernels + BN scale/bias + fc.
    aux = (768 * 128 + 2 * 128) + (128 * 768 * 25 + 2 * 768) + (768 * 1000 + 1000)
    expected = 27_161_264 - aux + 8 * (2048 + 1)
    model, x, variables = _inception_abstract()
    assert _n_params(variables["params"]) == expected == 23_850_960
    # BatchNorm running statistics: one mean and one var per BN channel, as many as BN scale+bias.
    bn_affine = sum(int(np.prod(v.shape)) for p, v in jax.tree_util.tree_leaves_with_path(variables["params"])
                    if "bn" in jax.tree_util.keystr(p))
    assert _n_params(variables["batch_stats"]) == bn_affine
    pool3, logits = jax.eval_shape(lambda v: model.apply(v, x), variables)
    assert pool3.shape == (2, 2048) and logits.shape == (2, 1008)


def test_inception_avg_pool_excludes_padding():
    # TF's (and pytorch-fid's patched) 3x3 average pool divides by the number of valid pixels.
    from diffax.models.inception import avg_pool3
    x = np.arange(16, dtype=np.float32).reshape(1, 4, 4, 1)
    got = np.asarray(avg_pool3(jnp.asarray(x)))[0, :, :, 0]
    assert got[0, 0] == pytest.approx(np.mean(x[0, :2, :2, 0]), abs=1e-6)  # corner: 4 valid pixels
    assert got[0, 1] == pytest.approx(np.mean(x[0, :2, :3, 0]), abs=1e-6)  # edge: 6 valid pixels
    assert got[1, 1] == pytest.approx(np.mean(x[0, :3, :3, 0]), abs=1e-6)  # interior: 9


def test_load_fid_weights_roundtrip_from_torch_layout(tmp_path):
    from diffax.models.inception import load_fid_weights
    _, _, variables = _inception_abstract()
    rng = np.random.default_rng(0)
    state, expected = {}, {}
    # Write a PyTorch-layout state dict (OIHW conv weights, (out, in) fc weight) independently of the loader.
    for path, leaf in jax.tree_util.tree_leaves_with_path(variables):
        names = [p.key for p in path]
        col, *mod, name = names
        value = rng.standard_normal(leaf.shape).astype(np.float32)
        expected[jax.tree_util.keystr(path)] = value
        if name == "kernel" and mod[-1] == "conv":
            key, torch_value = "weight", value.transpose(3, 2, 0, 1)
        elif name == "kernel":
            key, torch_value = "weight", value.T
        else:
            key = {"scale": "weight", "bias": "bias", "mean": "running_mean", "var": "running_var"}[name]
            torch_value = value
        state[".".join(mod + [key])] = torch_value
    state["Conv2d_1a_3x3.bn.num_batches_tracked"] = np.array(0)
    np.savez(tmp_path / "fid.npz", **state)
    loaded = load_fid_weights(tmp_path / "fid.npz")
    got = {jax.tree_util.keystr(p): np.asarray(v) for p, v in jax.tree_util.tree_leaves_with_path(loaded)}
    assert got.keys() == expected.keys()
    for k in expected:
        np.testing.assert_array_equal(got[k], expected[k], err_msg=k)
    # Negative control: a missing tensor is reported.
    del state["fc.bias"]
    np.savez(tmp_path / "bad.npz", **state)
    with pytest.raises(ValueError, match="missing"):
        load_fid_weights(tmp_path / "bad.npz", template=variables)
