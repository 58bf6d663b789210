"""Train state, optimizer, EMA, loss functions and the train step (single process).

Multi-device / multi-process equivalence is in tests/test_device_mesh.py.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from _compile import jit_once
from diffax import oracles, schedules
from diffax.device_mesh import make_mesh, replicate, shard_batch
from diffax.models import MLP
from diffax.training import (
    TrainState,
    check_finite,
    create_train_state,
    diffusion_loss_fn,
    dsm_loss_fn,
    ema_update,
    jit_train_step,
    make_lr_schedule,
    make_optimizer,
    make_train_step,
)
from diffax import importance_sampling
from diffax.training.step import LOSS_HISTORY, PER_EXAMPLE_T, PER_EXAMPLE_VB, drop_labels

BATCH = 64


# ----------------------------------------------------------------------------- state and optimizer


def test_create_train_state_fields():
    params = {"w": jnp.arange(3.0), "b": jnp.ones(())}
    tx = make_optimizer()
    for rng in (jax.random.PRNGKey(7), jax.random.key(7)):
        state = create_train_state(params=params, tx=tx, rng=rng)
        assert isinstance(state, TrainState)
        assert state.step.dtype == jnp.int32 and state.step.shape == () and int(state.step) == 0
        assert state.rng.dtype == jnp.uint32  # raw, so Orbax can save it
        np.testing.assert_array_equal(state.rng, jax.random.PRNGKey(7))
        jax.tree.map(np.testing.assert_array_equal, state.ema_params, params)
        assert state.extra == {}
    with pytest.raises(ValueError, match="rng must be"):
        create_train_state(params=params, tx=tx, rng=jnp.zeros(2, jnp.float32))


def test_ema_update_is_exactly_the_formula(x64):
    rng = np.random.default_rng(0)
    ema = {"a": rng.normal(size=(5, 3)), "b": [rng.normal(size=(4,))]}
    new = {"a": rng.normal(size=(5, 3)), "b": [rng.normal(size=(4,))]}
    decay = 0.9999
    got = ema_update(jax.tree.map(jnp.asarray, ema), jax.tree.map(jnp.asarray, new), decay)
    want = jax.tree.map(lambda e, p: decay * e + (1.0 - decay) * p, ema, new)  # numpy float64
    jax.tree.map(lambda g, w: np.testing.assert_array_equal(np.asarray(g), w), got, want)  # bitwise
    assert got["a"].dtype == jnp.float64


def test_lr_schedule_linear_warmup_and_cosine():
    sched = make_lr_schedule(lr=2e-4, warmup_steps=5000)
    for n in (0, 1, 2500, 4999, 5000, 10**6):
        assert math.isclose(float(sched(n)), 2e-4 * min(1.0, n / 5000), rel_tol=1e-6, abs_tol=1e-12)
    assert float(make_lr_schedule(lr=1e-3, warmup_steps=0)(0)) == pytest.approx(1e-3, rel=1e-7)
    cos = make_lr_schedule(lr=1.0, warmup_steps=10, decay_steps=110)
    # cosine decay: lr * (1 + cos(pi (n - 10) / 100)) / 2 after warm-up
    for n in (10, 35, 60, 110):
        assert float(cos(n)) == pytest.approx(0.5 * (1 + math.cos(math.pi * (n - 10) / 100)), abs=1e-6)


@pytest.mark.slow
def test_optimizer_is_clip_then_adam_with_warmup(x64):
    """make_optimizer == a hand-written numpy reference (global-norm clip, then Adam with lr(n))."""
    lr, warmup, clip, b1, b2, eps = 0.1, 2, 1.0, 0.9, 0.999, 1e-8
    tx = make_optimizer(lr=lr, warmup_steps=warmup, grad_clip=clip, b1=b1, b2=b2, eps=eps)
    rng = np.random.default_rng(1)
    p = {"w": rng.normal(size=(3,)), "v": rng.normal(size=(2, 2))}
    grads = [jax.tree.map(lambda x: s * rng.normal(size=x.shape), p) for s in (100.0, 0.3, 5.0)]
    params, opt_state = jax.tree.map(jnp.asarray, p), tx.init(jax.tree.map(jnp.asarray, p))
    ref, m, v = dict(p), jax.tree.map(np.zeros_like, p), jax.tree.map(np.zeros_like, p)
    for n, g in enumerate(grads):
        upd, opt_state = tx.update(jax.tree.map(jnp.asarray, g), opt_state, params)
        params = optax.apply_updates(params, upd)
        norm = math.sqrt(sum(float(np.sum(x**2)) for x in jax.tree.leaves(g)))
        g = jax.tree.map(lambda x: x * min(1.0, clip / norm), g)
        m = jax.tree.map(lambda m_, g_: b1 * m_ + (1 - b1) * g_, m, g)
        v = jax.tree.map(lambda v_, g_: b2 * v_ + (1 - b2) * g_**2, v, g)
        rate = lr * min(1.0, n / warmup)
        ref = jax.tree.map(
            lambda x, m_, v_: x - rate * (m_ / (1 - b1 ** (n + 1))) / (np.sqrt(v_ / (1 - b2 ** (n + 1))) + eps),
            ref, m, v,
        )  # fmt: skip
        # float64: agreement to rounding (rtol 1e-12).
        jax.tree.map(lambda a, b: np.testing.assert_allclose(np.asarray(a), b, rtol=1e-12, atol=1e-14), params, ref)
    # Negative control: without clipping the first (huge) gradient dominates m and the result differs.
    tx_noclip = make_optimizer(lr=lr, warmup_steps=warmup, grad_clip=None, b1=b1, b2=b2, eps=eps)
    q, st = jax.tree.map(jnp.asarray, p), tx_noclip.init(jax.tree.map(jnp.asarray, p))
    for g in grads:
        upd, st = tx_noclip.update(jax.tree.map(jnp.asarray, g), st, q)
        q = optax.apply_updates(q, upd)
    assert max(float(np.max(np.abs(np.asarray(q[k]) - ref[k]))) for k in ref) > 1e-3


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda: make_optimizer(lr=0.0), "lr must be > 0"),
        (lambda: make_optimizer(warmup_steps=-1), "warmup_steps"),
        (lambda: make_optimizer(warmup_steps=10, decay_steps=5), "decay_steps"),
        (lambda: make_optimizer(grad_clip=-1.0), "grad_clip"),
        (lambda: make_train_step(lambda *a: None, optax.sgd(1.0), ema_decay=1.5), "ema_decay"),
        (lambda: diffusion_loss_fn(None, schedules.linear(10, 1e-4, 0.02), loss_type="l1"), "loss_type"),
        (lambda: diffusion_loss_fn(None, schedules.linear(10, 1e-4, 0.02), p_uncond=0.1), "needs num_classes"),
        (lambda: diffusion_loss_fn(None, schedules.linear(10, 1e-4, 0.02), p_uncond=1.5, num_classes=3), "p_uncond"),
        (lambda: dsm_loss_fn(None, jnp.zeros((2, 2))), "sigmas"),
    ],
)
def test_bad_hyperparameters_raise(make, match):
    with pytest.raises(ValueError, match=match):
        make()


# ----------------------------------------------------------------------------- the train step


def _quadratic_loss(params, key, batch, train):
    """A key-dependent toy loss: mean (x w + b - noise)^2, noise ~ N(0, 1) from `key`."""
    noise = jax.random.normal(key, batch["x"].shape[:1], batch["x"].dtype)
    loss = jnp.mean((batch["x"] @ params["w"] + params["b"] - noise) ** 2)
    return loss, {"loss": loss}


def test_train_step_update_ema_step_and_lr_exact(x64):
    decay = 0.999
    sched = make_lr_schedule(lr=0.05, warmup_steps=4)
    tx = make_optimizer(lr=0.05, warmup_steps=4)
    step = jax.jit(make_train_step(_quadratic_loss, tx, ema_decay=decay, lr_schedule=sched))
    state = create_train_state(params={"w": jnp.ones(3), "b": jnp.zeros(())}, tx=tx, rng=jax.random.PRNGKey(0))
    batch = {"x": jnp.asarray(np.random.default_rng(0).normal(size=(16, 3)))}

    @jax.jit
    def reference(state):
        """The update written out: tx's update of the gradient at key fold_in(rng, step)."""
        key = jax.random.fold_in(state.rng, state.step)
        (loss, _), grads = jax.value_and_grad(_quadratic_loss, has_aux=True)(state.params, key, batch, True)
        upd, _ = tx.update(grads, state.opt_state, state.params)
        return loss, grads, optax.apply_updates(state.params, upd)

    for n in range(3):
        new, metrics = step(state, batch)
        assert int(new.step) == n + 1
        loss, grads, want = reference(state)
        jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-13, atol=1e-15), new.params, want)
        # EMA: decay * ema + (1 - decay) * new params, to float64 rounding. Inside the fused step XLA
        # may contract the multiply-add into an FMA, so the bound is in ulps of the summands (not of
        # the result, which can cancel): |got - want| <= 4 eps64 (|decay ema| + |(1 - decay) p|).
        # `test_ema_update_is_exactly_the_formula` checks the unfused function bitwise.
        for e, p, got in zip(*(jax.tree.leaves(t) for t in (state.ema_params, new.params, new.ema_params))):
            e, p, got = np.asarray(e), np.asarray(p), np.asarray(got)
            bound = 4 * np.finfo(np.float64).eps * (np.abs(decay * e) + np.abs((1 - decay) * p))
            assert np.all(np.abs(got - (decay * e + (1 - decay) * p)) <= bound)
        assert float(metrics["lr"]) == pytest.approx(0.05 * min(1.0, n / 4), abs=1e-9)
        assert float(metrics["loss"]) == pytest.approx(float(loss), rel=1e-12)
        assert float(metrics["grad_norm"]) == pytest.approx(float(optax.global_norm(grads)), rel=1e-12)
        state = new


@pytest.fixture(scope="module")
def toy():
    """A small MLP eps-model on the seed 1-D mixture, its loss, and ONE jitted (mesh) train step
    whose traces are counted (the tests below reuse it with the same shapes)."""
    schedule = schedules.cosine(100)
    gmm = oracles.seed_mixture_1d()
    model = MLP(hidden=32, num_layers=2, time_embed_dim=16)
    params = jit_once(model.init, jax.random.PRNGKey(1), jnp.zeros((1, 1)), jnp.zeros(1, jnp.int32))["params"]
    tx = make_optimizer(lr=3e-3, warmup_steps=10)
    loss_fn = diffusion_loss_fn(model.apply, schedule)
    traces = []

    def counted_loss(*args):
        traces.append(1)  # runs once per trace, never at run time
        return loss_fn(*args)

    mesh = make_mesh()
    step = jit_train_step(make_train_step(counted_loss, tx, ema_decay=0.99), mesh)
    # replicated up front, as the loop does: a state not yet on the mesh would trace a second time
    state = replicate(create_train_state(params=params, tx=tx, rng=jax.random.PRNGKey(2)), mesh)
    data = np.asarray(jax.jit(lambda k: gmm.sample(k, 200 * BATCH))(jax.random.PRNGKey(5))).reshape(200, BATCH, 1)
    return dict(loss_fn=loss_fn, step=step, state=state, data=data, traces=traces, mesh=mesh, gmm=gmm)


def _copy(state, mesh):
    """A fresh replicated copy (the jitted step donates, i.e. deletes, its input state)."""
    return replicate(jax.tree.map(np.array, state), mesh)


@pytest.mark.slow
def test_loss_decreases_on_1d_mixture(toy):
    """200 Adam steps (batch 64) on 0.5 N(-2, .5^2) + 0.5 N(2, .5^2) cut the L_simple loss by > 40%.

    The loss is evaluated at the same 4096 points, t and noise before and after (a fixed key), so
    the comparison is free of sampling noise; measured: 1.59 -> ~0.55.
    """
    evalset = {"x": jnp.asarray(toy["data"][:64].reshape(-1, 1))}
    evaluate = jax.jit(lambda p: toy["loss_fn"](p, jax.random.PRNGKey(4), evalset, False)[0])
    state = _copy(toy["state"], toy["mesh"])
    before = float(evaluate(state.params))
    for xb in toy["data"]:
        state, metrics = toy["step"](state, shard_batch({"x": xb}, toy["mesh"]))
    after, after_ema = float(evaluate(state.params)), float(evaluate(state.ema_params))
    assert int(state.step) == 200
    assert after < 0.6 * before, (before, after)
    assert after_ema < 0.6 * before, (before, after_ema)


def test_train_step_is_deterministic_and_compiles_once(toy):
    batch = shard_batch({"x": toy["data"][0]}, toy["mesh"])
    a, ma = toy["step"](_copy(toy["state"], toy["mesh"]), batch)
    b, mb = toy["step"](_copy(toy["state"], toy["mesh"]), batch)
    for x, y in zip(jax.tree.leaves((a, ma)), jax.tree.leaves((b, mb))):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))  # bitwise
    for xb in toy["data"][1:4]:  # more steps, new step numbers and data: no new trace
        a, _ = toy["step"](a, shard_batch({"x": xb}, toy["mesh"]))
    assert len(toy["traces"]) == 1
    # Negative control: the next step (another fold_in key) differs from the first.
    c, _ = toy["step"](_copy(b, toy["mesh"]), batch)
    assert not np.array_equal(np.asarray(c.params["dense_out"]["bias"]), np.asarray(b.params["dense_out"]["bias"]))


def test_non_finite_loss_is_reported(toy):
    xb = toy["data"][0].copy()
    xb[3, 0] = np.nan
    _, metrics = toy["step"](_copy(toy["state"], toy["mesh"]), shard_batch({"x": xb}, toy["mesh"]))
    with pytest.raises(FloatingPointError, match=r"step 17: .*loss=nan"):
        check_finite(metrics, 17)
    _, good = toy["step"](_copy(toy["state"], toy["mesh"]), shard_batch({"x": toy["data"][0]}, toy["mesh"]))
    check_finite(good, 17)  # negative control: finite metrics pass
    with pytest.raises(FloatingPointError, match=r"step 3: grad_norm=inf"):
        check_finite({"loss": 1.0, "grad_norm": np.inf}, 3)


# ----------------------------------------------------------------------------- loss functions


def test_label_dropout_rate():
    """P(label -> null) = p_uncond. n = 20000 draws: sd = sqrt(p(1-p)/n) = 0.0031; 5 sd tolerance
    (false-failure probability < 1e-6; the key is fixed, so the test is deterministic)."""
    y = jnp.zeros(20000, jnp.int32)
    dropped = drop_labels(jax.random.PRNGKey(0), y, 0.25, 10)
    assert set(np.unique(np.asarray(dropped))) == {0, 10}
    assert abs(float(jnp.mean(dropped == 10)) - 0.25) < 5 * math.sqrt(0.25 * 0.75 / 20000)


@pytest.mark.slow
def test_cfg_training_with_p_uncond_one_equals_null_labels():
    """p_uncond = 1 trains on the null class only: the loss equals the loss with every label set to
    the null class K (same key, bitwise); with p_uncond = 0 the labels matter (negative control)."""
    k = 3
    model = MLP(hidden=8, num_layers=1, num_classes=k, time_embed_dim=8)
    x = jnp.linspace(-2.0, 2.0, 16).reshape(16, 1)
    y = jnp.arange(16, dtype=jnp.int32) % k
    params = jit_once(model.init, jax.random.PRNGKey(0), x, jnp.zeros(16, jnp.int32), y)["params"]
    schedule = schedules.linear(50)
    key = jax.random.PRNGKey(1)
    always, never = (
        jax.jit(diffusion_loss_fn(model.apply, schedule, p_uncond=p, num_classes=k), static_argnums=3)
        for p in (1.0, 0.0)
    )
    null = jnp.full_like(y, k)
    loss = lambda fn, labels: float(fn(params, key, {"x": x, "y": labels}, True)[0])  # noqa: E731
    assert loss(always, y) == loss(never, null)
    assert loss(never, y) != loss(never, null)


def test_hybrid_metrics_are_consistent():
    """loss_type='hybrid' with a learned variance: loss = mse + lambda T vb (batch means; Nichol &
    Dhariwal 2021, eq. 16), float32 rounding: rtol 1e-5."""
    model = MLP(hidden=8, num_layers=1, time_embed_dim=8, learn_sigma=True)
    x = jnp.linspace(-1.0, 1.0, 32).reshape(32, 1)
    params = jit_once(model.init, jax.random.PRNGKey(0), x, jnp.zeros(32, jnp.int32))["params"]
    schedule = schedules.linear(50)
    fn = diffusion_loss_fn(model.apply, schedule, loss_type="hybrid", var_type="learned_range", lambda_vlb=0.001)
    loss, metrics = jax.jit(fn, static_argnums=3)(params, jax.random.PRNGKey(1), {"x": x}, True)
    assert set(metrics) == {"loss", "mse", "vb", PER_EXAMPLE_VB, PER_EXAMPLE_T}
    assert metrics[PER_EXAMPLE_VB].shape == metrics[PER_EXAMPLE_T].shape == (32,)
    assert float(metrics["vb"]) > 0
    np.testing.assert_allclose(float(loss), float(metrics["mse"] + 0.001 * 50 * metrics["vb"]), rtol=1e-5)


def test_dsm_loss_fn_at_the_exact_score():
    """With data N(0, I_2) and a network returning sigma * (exact score) given log sigma, the DSM loss
    (Song & Ermon 2019, eq. 5-6) has mean  E_sigma[ d/2 * 1/(1 + sigma^2) ]  (d = 2).

    Per example the loss is (v/2) chi^2_2 with v = 1/(1 + sigma^2) <= 1, so its sd is <= 1 and the
    mean of n = 20000 has sd <= 0.0071; tolerance 5 sd (false failure < 1e-6). Negative control: a
    network that returns the score itself (ignoring the /sigma convention) misses by > 10 sd.
    """
    sigmas = jnp.asarray([0.1, 1.0, 10.0])
    expected = float(jnp.mean(1.0 / (1.0 + sigmas**2)))

    def sigma_times_score(variables, x, t, y=None, train=False, rngs=None):
        sigma = jnp.exp(t)[:, None]  # the model sees log sigma as t
        return sigma * (-x / (1.0 + sigma**2))

    def score_only(variables, x, t, y=None, train=False, rngs=None):
        return -x / (1.0 + jnp.exp(t)[:, None] ** 2)

    x = jax.random.normal(jax.random.PRNGKey(0), (20000, 2))
    tol = 5 * 1.0 / math.sqrt(20000)
    got = float(dsm_loss_fn(sigma_times_score, sigmas)({}, jax.random.PRNGKey(1), {"x": x}, True)[0])
    assert abs(got - expected) < tol, (got, expected)
    wrong = float(dsm_loss_fn(score_only, sigmas)({}, jax.random.PRNGKey(1), {"x": x}, True)[0])
    assert abs(wrong - expected) > 10 * tol


# ----------------------------------------------------------------------------- importance-sampled t


def _is_setup(num_t=20, batch=16):
    model = MLP(hidden=16, num_layers=1, time_embed_dim=8, learn_sigma=True)
    x = jnp.linspace(-1.0, 1.0, batch).reshape(batch, 1)
    params = jit_once(model.init, jax.random.PRNGKey(0), x, jnp.zeros(batch, jnp.int32))["params"]
    schedule = schedules.linear(num_t, 1e-4, 0.02)
    loss_fn = diffusion_loss_fn(model.apply, schedule, loss_type="hybrid", var_type="learned_range")
    # A warm, strongly skewed history: L_t = (t + 1)^2 / 100 (p_t ∝ (t + 1)^2).
    hist = importance_sampling.init_loss_history(num_t)
    for _ in range(10):
        ts = jnp.arange(num_t, dtype=jnp.int32)
        hist = importance_sampling.update_loss_history(hist, ts, (ts + 1.0) ** 2 / 100)
    return model, x, params, schedule, loss_fn, hist


@pytest.mark.slow
def test_importance_weights_algebraic_identity_through_the_loss(x64):
    """An algebraic identity, checked through the real loss: for t ~ p with weights 1/(T p_t),
    sum_t p_t w_t loss(t) = mean_t loss(t) holds by construction; what it tests is that diffusion_loss_fn
    applies t_weights to the WHOLE per-example loss (any other placement breaks it). The expectation
    sum_t p_t loss(t, w_t) over all T values of t (same key, hence the same noise and dropout) equals
    mean_t loss(t, 1) to float64 rounding (rtol 1e-10), for the hybrid loss through diffusion_loss_fn.
    Negative control: without the weights, sum_t p_t loss(t, 1) misses by > 1e-3 relative, 10^7 times
    the tolerance (measured 3%: the untrained MSE part is nearly flat in t, so the bias is modest)."""
    _, x, params, schedule, loss_fn, hist = _is_setup()
    T, B = schedule.num_timesteps, x.shape[0]
    p = importance_sampling.timestep_probs(hist)
    assert float(p[-1] / p[0]) > 100  # skewed: the test is not trivially uniform

    @jax.jit
    def loss_at(t, w):
        batch = {"x": x, "t": jnp.full((B,), t, jnp.int32), "t_weights": jnp.full((B,), w)}
        return loss_fn(params, jax.random.PRNGKey(3), batch, True)[0]

    ts = np.arange(T)
    weighted = np.array([float(loss_at(t, 1.0 / (T * float(p[t])))) for t in ts])
    plain = np.array([float(loss_at(t, 1.0)) for t in ts])
    p = np.asarray(p, np.float64)
    np.testing.assert_allclose(np.sum(p * weighted), np.mean(plain), rtol=1e-10)
    assert abs(np.sum(p * plain) / np.mean(plain) - 1) > 1e-3


@pytest.mark.slow
def test_importance_sampling_train_step_equals_manual_path():
    """make_train_step(importance_sampling=True) equals the manual path: key -> (loss key, t key),
    (t, w) = sample_timesteps(t key, history, B), loss_fn on the batch with t / t_weights, Adam, and
    the history updated with the loss's per-example L_t. Bitwise on params and history; the
    per-example entries do not leak into the step's metrics. The loss-history counts grow by the
    number of draws of each t; a uniform step (importance_sampling=False) draws other t."""
    model, x, params, schedule, loss_fn, hist = _is_setup()
    T, B = schedule.num_timesteps, x.shape[0]
    tx = make_optimizer(lr=1e-3)
    state = create_train_state(params=params, tx=tx, rng=jax.random.PRNGKey(7), extra={LOSS_HISTORY: hist})
    step = jax.jit(make_train_step(loss_fn, tx, ema_decay=0.9, importance_sampling=True))
    new, metrics = step(state, {"x": x})
    assert PER_EXAMPLE_VB not in metrics and PER_EXAMPLE_T not in metrics

    @jax.jit
    def manual(state):
        key, k_t = jax.random.split(jax.random.fold_in(state.rng, state.step))
        t, w = importance_sampling.sample_timesteps(k_t, hist, B)
        (loss, m), g = jax.value_and_grad(loss_fn, has_aux=True)(state.params, key, {"x": x, "t": t, "t_weights": w},
                                                                 True)
        updates, _ = tx.update(g, state.opt_state, state.params)
        return optax.apply_updates(state.params, updates), importance_sampling.update_loss_history(
            hist, m[PER_EXAMPLE_T], m[PER_EXAMPLE_VB]), t, loss

    want_params, want_hist, t, loss = manual(state)
    for a, b in zip(jax.tree.leaves((new.params, new.extra[LOSS_HISTORY])), jax.tree.leaves((want_params, want_hist))):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert float(metrics["loss"]) == float(loss)
    # The history is full (10 per t) and stays full; its newest entries are the batch's L_t.
    np.testing.assert_array_equal(np.asarray(new.extra[LOSS_HISTORY]["counts"]), np.full(T, 10))
    assert not np.array_equal(np.asarray(new.extra[LOSS_HISTORY]["values"]), np.asarray(hist["values"]))
    # importance sampling favours large t here (p_t ∝ (t+1)^2): mean t well above the uniform 9.5.
    assert float(np.mean(np.asarray(t))) > 12


def test_importance_sampling_needs_history_and_a_vb_loss():
    model, x, params, schedule, loss_fn, hist = _is_setup()
    tx = make_optimizer(lr=1e-3)
    state = create_train_state(params=params, tx=tx, rng=jax.random.PRNGKey(7))
    # Both are trace-time errors: jax.eval_shape traces the step without running it.
    with pytest.raises(ValueError, match="loss_history"):
        jax.eval_shape(make_train_step(loss_fn, tx, ema_decay=0.9, importance_sampling=True), state, {"x": x})
    simple = diffusion_loss_fn(model.apply, schedule, var_type="learned_range")
    state = state.replace(extra={LOSS_HISTORY: hist})
    with pytest.raises(ValueError, match="per-example L_t"):
        jax.eval_shape(make_train_step(simple, tx, ema_decay=0.9, importance_sampling=True), state, {"x": x})


# ----------------------------------------------------------------------------- EMA warm-up and debiasing


def test_ema_warmup_decay_schedule_and_step(x64):
    """ema_decay_at: min(d, (1+k)/(10+k)) exactly; d itself without warm-up. make_train_step with
    ema_warmup=True applies the step's decay: the first update (k = 0, decay 0.1) gives
    ema = 0.1 theta_0 + 0.9 theta_1 (rtol 1e-12 in x64)."""
    from diffax.training.optim import ema_decay_at

    ks = np.arange(0, 20000, 37)
    np.testing.assert_allclose(np.asarray(ema_decay_at(ks, 0.999)), np.minimum(0.999, (1 + ks) / (10 + ks)), rtol=1e-6)
    assert ema_decay_at(5, 0.999, warmup=False) == 0.999
    tx = optax.sgd(0.1)
    params = {"w": jnp.array([1.0, -2.0]), "b": jnp.array(0.5)}
    state = create_train_state(params=params, tx=tx, rng=jax.random.PRNGKey(0))
    step = jax.jit(make_train_step(_quadratic_loss, tx, ema_decay=0.999, ema_warmup=True))
    new, _ = step(state, {"x": jnp.array([[0.5, 0.25], [1.0, -1.0]])})
    np.testing.assert_allclose(new.ema_params["w"], 0.1 * state.params["w"] + 0.9 * new.params["w"], rtol=1e-12)


def test_debias_ema_is_the_normalised_average_of_the_iterates(x64):
    """After n constant-decay updates, debias_ema(ema, theta_0, d, n) = sum_k w_k theta_k with
    w_k = (1 - d) d^(n-k) / (1 - d^n) (rtol 1e-10); the raw EMA keeps d^n theta_0 (negative control)."""
    from diffax.training.optim import debias_ema

    rng = np.random.default_rng(0)
    thetas = rng.normal(size=(31, 3))  # theta_0 .. theta_30
    d, n = 0.9, 30
    ema = thetas[0]
    for k in range(1, n + 1):
        ema = ema_update(ema, thetas[k], d)
    w = (1 - d) * d ** (n - np.arange(1, n + 1)) / (1 - d**n)
    want = np.sum(w[:, None] * thetas[1:], axis=0)
    np.testing.assert_allclose(debias_ema({"a": ema}, {"a": thetas[0]}, d, n)["a"], want, rtol=1e-10)
    assert np.max(np.abs(np.asarray(ema) - want)) > 1e-3
