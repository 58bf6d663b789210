"""The training loop and the sample / eval entry points: ``train_and_evaluate(config, workdir)``,
``sample(config, workdir)``, ``evaluate(config, workdir)``.

Workdir layout::

    checkpoints/<step>/   Orbax checkpoints (TrainState + data position), the last K kept
    checkpoints/config.json
    tensorboard/          event files (tensorboardX)        metrics.jsonl   one line per logged step
    loss.png              loss curve (end of training)      samples_<step>.png   at training.sample_every
    samples.npy           raw samples (N, ...) of the EMA parameters      samples.png   their picture
    eval.json             distances to held-out data (toys), see `evaluate`

Resumption: `train_and_evaluate` restores the latest checkpoint in ``workdir/checkpoints`` (state,
optimizer, EMA, RNG and the data iterator's position) and continues to ``training.num_steps``;
since the step key is ``fold_in(rng, step)`` and the data order is resumed, a run interrupted and
resumed gives bitwise the parameters of an uninterrupted one (on the same machine).

Non-finite loss: metrics are checked (`step.check_finite`) every ``log_every`` steps and before
every save, and the parameters are checked before every save, so a NaN/Inf state is never
checkpointed; training stops with ``FloatingPointError`` and the last good checkpoint stays.
Only process 0 writes logs and pictures; every process takes part in checkpointing.
"""

from __future__ import annotations

import json
import os
import time
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from diffax import data as data_lib
from diffax import diffusion as diffusion_lib
from diffax.checkpoint import Checkpointer
from diffax.training import builders, image_eval as image_eval_lib, plots, sharding, step as step_lib
from diffax.training.logging import MetricWriter, read_metrics
from diffax.training.state import TrainState, create_train_state

__all__ = [
    "train_and_evaluate",
    "sample",
    "evaluate",
    "toy_metrics",
    "wasserstein_1d",
    "sliced_wasserstein",
    "mode_weights",
    "assign_components",
    "classifier_eval",
    "load_run",
    "CHECKPOINT_DIR",
]

CHECKPOINT_DIR = "checkpoints"
# Streams of randomness derived from config.seed (never the same key for two purposes).
_INIT_STREAM, _STATE_STREAM, _SAMPLE_STREAM, _TRAIN_SAMPLE_STREAM, _EVAL_STREAM = 0, 1, 2, 3, 4
# Seeds of the toy data sets used by `evaluate` (offsets of config.seed, far from the training set's).
_HELDOUT_SEED_OFFSET, _BASELINE_SEED_OFFSET = 1_000_003, 2_000_003


def _key(config: ml_collections.ConfigDict, stream: int) -> jax.Array:
    return jax.random.fold_in(jax.random.PRNGKey(config.seed), stream)


def _is_main() -> bool:
    return jax.process_index() == 0


def _abstract_state(config, model, tx, data_shape, mesh) -> TrainState:
    """The TrainState's shapes/dtypes (no computation), replicated over `mesh`: a restore target."""

    def init():
        params = builders.init_params(model, _key(config, _INIT_STREAM), data_shape)
        return create_train_state(params=params, tx=tx, rng=_key(config, _STATE_STREAM),
                                  extra=builders.initial_extra(config))

    rep = sharding.replicated(mesh)
    return jax.tree.map(lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=rep), jax.eval_shape(init))


def _initial_state(config, model, tx, data_shape, mesh) -> TrainState:
    """The step-0 TrainState, built in ONE compiled program and placed replicated over `mesh`."""

    def init():
        params = builders.init_params(model, _key(config, _INIT_STREAM), data_shape)
        return create_train_state(params=params, tx=tx, rng=_key(config, _STATE_STREAM),
                                  extra=builders.initial_extra(config))

    return jax.jit(init, out_shardings=sharding.replicated(mesh))()


@jax.jit
def _all_finite(tree) -> jax.Array:
    return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)]))


def _check_interval(name: str, value: Any, allow_zero: bool = False) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < (0 if allow_zero else 1):
        raise ValueError(f"{name} must be an int >= {0 if allow_zero else 1}, got {value!r}")
    return value


def _mean_metrics(pending: list[Mapping[str, jax.Array]]) -> dict[str, float]:
    host = jax.device_get(pending)
    return {k: float(np.mean([np.asarray(m[k]) for m in host])) for k in host[-1]}


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> TrainState:
    """Trains to ``config.training.num_steps`` (resuming from ``workdir`` if it holds a checkpoint).

    Returns the final TrainState. Raises FloatingPointError on a non-finite loss or parameters
    (after keeping the last good checkpoint).
    """
    t = config.training
    num_steps = _check_interval("training.num_steps", t.num_steps)
    ckpt_every = _check_interval("training.checkpoint_every", t.checkpoint_every)
    log_every = _check_interval("training.log_every", t.log_every)
    sample_every = _check_interval("training.sample_every", t.sample_every, allow_zero=True)
    os.makedirs(workdir, exist_ok=True)

    mesh = sharding.make_mesh()
    schedule = builders.build_schedule(config)
    batches = builders.build_data(config, split="train")
    data_shape = _data_shape(config)
    model = builders.build_model(config, data_shape)
    tx = builders.build_optimizer(config)
    loss_fn = builders.build_loss_fn(config, model, schedule)
    train_step = sharding.jit_train_step(
        step_lib.make_train_step(loss_fn, tx, ema_decay=t.ema_decay, lr_schedule=builders.build_lr_schedule(config),
                                 importance_sampling=builders.importance_sampling(config),
                                 ema_warmup=bool(t.ema_warmup)),
        mesh,
    )

    ckpt = Checkpointer(os.path.join(workdir, CHECKPOINT_DIR), max_to_keep=t.keep_checkpoints, config=config.to_dict())
    restored = ckpt.restore_latest(_abstract_state(config, model, tx, data_shape, mesh))
    if restored is None:
        state = _initial_state(config, model, tx, data_shape, mesh)
    else:
        state, data_state = restored
        batches.set_state(data_state)
    start = int(jax.device_get(state.step))

    writer = MetricWriter(workdir, enabled=_is_main())
    sample_fn = None
    if sample_every:
        sample_fn = jax.jit(builders.build_sampler(config, model, schedule, data_shape), static_argnums=2)
    from tqdm import tqdm

    bar = tqdm(total=num_steps, initial=start, disable=not _is_main(), desc="train", unit="step", dynamic_ncols=True,
               mininterval=1.0)
    pending: list[Mapping[str, jax.Array]] = []
    last_saved = ckpt.latest_step()
    t_log = time.perf_counter()
    try:
        iterator = iter(batches)
        for i in range(start + 1, num_steps + 1):
            batch = sharding.shard_batch(next(iterator), mesh)
            state, metrics = train_step(state, batch)
            pending.append(metrics)
            bar.update(1)
            is_log = i % log_every == 0 or i == num_steps
            is_save = i % ckpt_every == 0 or i == num_steps
            if is_log or is_save:
                step_lib.check_finite(jax.tree.map(lambda *v: jnp.stack(v), *pending), i)
            if is_log:
                now = time.perf_counter()
                scalars = _mean_metrics(pending)
                scalars["steps_per_sec"] = len(pending) / max(now - t_log, 1e-9)
                t_log = now
                writer.write_scalars(i, scalars)
                bar.set_postfix(loss=f"{scalars['loss']:.4g}")
                pending = []
            if is_save:
                if not bool(_all_finite(state.params)) or not bool(_all_finite(state.ema_params)):
                    raise FloatingPointError(f"non-finite parameters at step {i} (stopping; not saved)")
                ckpt.save(i, state, data_state=batches.get_state())
                last_saved = i
            if sample_fn is not None and i % sample_every == 0:
                key = jax.random.fold_in(_key(config, _TRAIN_SAMPLE_STREAM), i)
                x = np.asarray(jax.device_get(sample_fn(state.ema_params, key, 64)))
                if _is_main():
                    plots.save_samples_figure(os.path.join(workdir, f"samples_{i:08d}.png"), x, title=f"step {i}")
                    if x.ndim == 4:
                        writer.write_image(i, "samples", plots.image_grid(x))
    except FloatingPointError as e:
        raise FloatingPointError(
            f"{e}. Last good checkpoint: step {last_saved} in {ckpt.directory}. Try a smaller optim.lr, "
            f"more optim.warmup_steps or optim.grad_clip."
        ) from None
    finally:
        bar.close()
        ckpt.close()
        writer.close()
        if _is_main():
            records = [r for r in read_metrics(workdir) if "loss" in r]
            if records:
                plots.save_loss_curve(os.path.join(workdir, "loss.png"), [r["step"] for r in records],
                                      [r["loss"] for r in records])  # fmt: skip
    return state


def _restore_ema_params(config, workdir: str):
    """(model, schedule, data_shape, ema_params, step) from the latest checkpoint in ``workdir``."""
    directory = os.path.join(workdir, CHECKPOINT_DIR)
    if not os.path.isdir(directory):
        raise FileNotFoundError(f"no checkpoint directory {directory}; train first (--mode=train)")
    mesh = sharding.make_mesh()
    data_shape = _data_shape(config)
    model = builders.build_model(config, data_shape)
    tx = builders.build_optimizer(config)
    with Checkpointer(directory, max_to_keep=config.training.keep_checkpoints) as ckpt:
        step = ckpt.latest_step()
        if step is None:
            raise FileNotFoundError(f"no finalized checkpoint in {directory}; train first (--mode=train)")
        state, _ = ckpt.restore(step, _abstract_state(config, model, tx, data_shape, mesh))
    return model, builders.build_schedule(config), data_shape, state.ema_params, step


def load_run(workdir: str):
    """(config, module, ema_params, step) of the run saved in `workdir` (its checkpoints/config.json and
    latest checkpoint), e.g. a noise-aware classifier for classifier guidance."""
    path = os.path.join(workdir, CHECKPOINT_DIR, "config.json")
    if not os.path.exists(path):
        raise FileNotFoundError(f"no run config {path}: train that run first (python -m diffax.main ... --mode=train)")
    with open(path) as f:
        config = ml_collections.ConfigDict(json.load(f))
    module, _, _, params, step = _restore_ema_params(config, workdir)
    return config, module, params, step


def _guidance_classifier(config):
    """(module, ema_params) of sampling.classifier_workdir when sampling.classifier_scale != 0, else None."""
    s = config.sampling
    if not s.classifier_scale:
        return None
    if not s.classifier_workdir:
        raise ValueError(f"sampling.classifier_scale={s.classifier_scale} needs sampling.classifier_workdir (the "
                         "workdir of a training.objective='noisy_classifier' run), got None")  # fmt: skip
    clf_config, module, params, _ = load_run(s.classifier_workdir)
    if clf_config.training.objective != "noisy_classifier":
        raise ValueError(f"{s.classifier_workdir} holds a {clf_config.training.objective!r} run, not a "
                         "'noisy_classifier' one")  # fmt: skip
    return module, params


def _data_shape(config) -> tuple[int, ...]:
    """One example's shape: (D,) for toys, (H, W, C) for images (`diffax.data.data_shape`)."""
    return tuple(data_lib.data_shape(config.data.name, path=config.data.path))


def _generate(config, workdir: str) -> tuple[np.ndarray, int]:
    """sampling.num_samples samples of the EMA parameters, in chunks of sampling.batch_size."""
    model, schedule, data_shape, ema_params, step = _restore_ema_params(config, workdir)
    n = config.sampling.num_samples
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"sampling.num_samples must be an int >= 1, got {n!r}")
    chunk = config.sampling.batch_size or n
    sampler = builders.build_sampler(config, model, schedule, data_shape, classifier=_guidance_classifier(config))
    sample_fn = jax.jit(sampler, static_argnums=2)
    key = _key(config, _SAMPLE_STREAM)
    out = []
    for j, lo in enumerate(range(0, n, chunk)):
        m = min(chunk, n - lo)
        out.append(np.asarray(jax.device_get(sample_fn(ema_params, jax.random.fold_in(key, j), m))))
    return np.concatenate(out, axis=0), step


def _reference_data(config, n: int, seed_offset: int) -> np.ndarray | None:
    """n fresh points of a toy data set (None for image data)."""
    if config.data.name not in data_lib.TOY_DATASETS:
        return None
    return data_lib.toy(config.data.name, n, seed=config.seed + seed_offset)[0]


def sample(config: ml_collections.ConfigDict, workdir: str) -> np.ndarray:
    """Writes ``samples.npy`` (N, ...) and ``samples.png`` from the latest checkpoint's EMA params.

    The picture: an image grid, a 1-D histogram over the true density (mixtures) or the data, or
    a 2-D scatter over the data. Returns the samples.
    """
    x, step = _generate(config, workdir)
    if _is_main():
        np.save(os.path.join(workdir, "samples.npy"), x)
        density = None
        mix = data_lib.toy_mixture(config.data.name) if config.data.name in data_lib.TOY_DATASETS else None
        if mix is not None and x.shape[1] == 1:
            density = lambda g: np.exp(np.asarray(mix.log_prob(jnp.asarray(g, jnp.float32)[:, None])))  # noqa: E731
        ref = _reference_data(config, min(len(x), 5000), _HELDOUT_SEED_OFFSET)
        plots.save_samples_figure(os.path.join(workdir, "samples.png"), x, data=ref, density=density,
                                  title=f"{config.data.name}: {len(x)} samples, step {step}")  # fmt: skip
    return x


def wasserstein_1d(a: np.ndarray, b: np.ndarray) -> float:
    """W1 between two empirical 1-D distributions: integral |F_a(x) - F_b(x)| dx (exact, any sizes)."""
    a, b = np.sort(np.ravel(a).astype(np.float64)), np.sort(np.ravel(b).astype(np.float64))
    xs = np.sort(np.concatenate([a, b]))
    fa = np.searchsorted(a, xs[:-1], side="right") / len(a)
    fb = np.searchsorted(b, xs[:-1], side="right") / len(b)
    return float(np.sum(np.abs(fa - fb) * np.diff(xs)))


def sliced_wasserstein(a: np.ndarray, b: np.ndarray, *, num_projections: int = 256, seed: int = 0) -> float:
    """Sliced 1-Wasserstein distance: mean over random unit directions u of W1(<a, u>, <b, u>).

    (Rabin et al. 2011; Bonneel et al. 2015.) The directions are drawn uniformly on the sphere
    from ``seed``, so the same inputs give the same value.
    """
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    u = np.random.default_rng(seed).standard_normal((num_projections, a.shape[1]))
    u /= np.linalg.norm(u, axis=1, keepdims=True)
    return float(np.mean([wasserstein_1d(a @ v, b @ v) for v in u]))


def assign_components(x: np.ndarray, mixture) -> np.ndarray:
    """The most likely component of each point: argmax_k w_k N(x; mu_k, diag(std_k^2)), shape (N,)."""
    w, mu, sd = (np.asarray(v, np.float64) for v in (mixture.weights, mixture.means, mixture.stds))
    x = np.asarray(x, np.float64)[:, None, :]
    logp = np.log(w) - np.sum(np.log(sd) + 0.5 * ((x - mu) / sd) ** 2, axis=-1)
    return np.argmax(logp, axis=1)


def mode_weights(x: np.ndarray, mixture) -> np.ndarray:
    """Fraction of the points assigned to each component k by argmax_k w_k N(x; mu_k, diag(std_k^2))."""
    return np.bincount(assign_components(x, mixture), minlength=len(mixture.weights)) / len(x)


def toy_metrics(samples: np.ndarray, heldout: np.ndarray, baseline: np.ndarray, *, mixture=None) -> dict[str, Any]:
    """Distances of samples to held-out data, beside the same distance for fresh data (the baseline).

    D = W1 for 1-D data, the sliced W1 for 2-D. ``distance_ratio`` = D(samples, heldout) /
    D(baseline, heldout): about 1 for a perfect model with as many samples as baseline points. For a
    mixture, the mode weights of samples (nearest component by weighted density) and the true weights.
    """
    dist = wasserstein_1d if samples.shape[1] == 1 else sliced_wasserstein
    name = "w1" if samples.shape[1] == 1 else "sliced_w1"
    d_model, d_base = dist(samples, heldout), dist(baseline, heldout)
    out: dict[str, Any] = {
        "metric": name,
        f"{name}_samples_vs_heldout": d_model,
        f"{name}_data_vs_heldout": d_base,
        "distance_ratio": d_model / max(d_base, 1e-12),
        "num_samples": int(len(samples)),
        "num_heldout": int(len(heldout)),
    }
    if mixture is not None:
        mw, tw = mode_weights(samples, mixture), np.asarray(mixture.weights, np.float64)
        out["mode_weights"] = mw.tolist()
        out["true_mode_weights"] = tw.tolist()
        out["mode_weights_data"] = mode_weights(baseline, mixture).tolist()
        out["mode_weight_max_abs_error"] = float(np.max(np.abs(mw - tw)))
    return out


def image_metrics(samples: np.ndarray, config: ml_collections.ConfigDict) -> dict[str, Any]:
    """Sample statistics of images: per-channel mean and std and the fraction inside [-1, 1]."""
    axes = tuple(range(samples.ndim - 1))
    return {
        "channel_mean": np.mean(samples, axis=axes).tolist(),
        "channel_std": np.std(samples, axis=axes).tolist(),
        "fraction_in_range": float(np.mean(np.abs(samples) <= 1.0)),
        "num_samples": int(len(samples)),
    }


def _test_split(config) -> tuple[np.ndarray, np.ndarray | None]:
    name = config.data.name
    split = "train" if name == "npz" else "test"  # an .npz holds one split
    return data_lib.load_array(name, split=split, data_dir=config.data.data_dir, path=config.data.path)


def image_eval(config: ml_collections.ConfigDict, workdir: str, samples: np.ndarray) -> dict[str, Any]:
    """Test-split bits/dim (eval.bpd_num_examples > 0) and classifier FID (eval.classifier_path set)
    of an image model, via `diffax.training.image_eval`. A class-conditional model trained with label
    dropout (p_uncond > 0) is scored unconditionally (null class), one without it on the true labels.
    """
    e = config.eval
    out: dict[str, Any] = {}
    if not (e.bpd_num_examples or e.classifier_path):
        return out
    images, labels = _test_split(config)
    num_classes = config.model.num_classes
    if e.bpd_num_examples:
        n = _check_interval("eval.bpd_num_examples", e.bpd_num_examples)
        model, schedule, _, ema_params, _ = _restore_ema_params(config, workdir)
        y = None
        if num_classes is not None:
            unconditional = config.diffusion.p_uncond > 0 or labels is None
            y = np.full((min(n, len(images)),), num_classes, np.int32) if unconditional else labels[:n]
            out["bpd_conditioning"] = "null_class" if unconditional else "true_labels"
        t0 = time.perf_counter()
        bpd = image_eval_lib.test_bits_per_dim(
            model.apply, ema_params, schedule, images[:n], _key(config, _EVAL_STREAM), labels=y,
            batch_size=_check_interval("eval.bpd_batch_size", e.bpd_batch_size),
            mean_type=config.diffusion.mean_type, var_type=config.diffusion.var_type, progress=_is_main(),
        )  # fmt: skip
        out.update(test_bpd=bpd["bpd"], test_bpd_stderr=bpd["bpd_stderr"], test_prior_bpd=bpd["prior_bpd"],
                   test_decoder_bpd=bpd["decoder_bpd"], bpd_num_examples=bpd["num_examples"])  # fmt: skip
        out["bpd_seconds"] = time.perf_counter() - t0
    if e.classifier_path:
        n_ref = e.fid_num_reference or len(images)
        sample_labels = None if num_classes is None else np.arange(len(samples)) % num_classes
        out.update(image_eval_lib.classifier_metrics(samples, e.classifier_path, images[:n_ref],
                                                 sample_labels=sample_labels))  # fmt: skip
    return out


def evaluate(config: ml_collections.ConfigDict, workdir: str, *, samples: np.ndarray | None = None) -> dict[str, Any]:
    """Writes ``workdir/eval.json`` and returns it.

    Toy data: `toy_metrics` between the samples (``samples``, or fresh ones from the latest
    checkpoint) and ``eval.num_reference`` held-out points (default: as many as the samples),
    beside the data-vs-held-out baseline. Images: `image_metrics`.
    """
    if builders.objective(config) == "noisy_classifier":
        return _write_eval(workdir, classifier_eval(config, workdir))
    if samples is None:
        samples, step = _generate(config, workdir)
    else:
        with Checkpointer(os.path.join(workdir, CHECKPOINT_DIR), max_to_keep=config.training.keep_checkpoints) as c:
            step = c.latest_step()
    samples = np.asarray(samples, np.float64)
    if config.data.name in data_lib.TOY_DATASETS:
        n_ref = config.eval.num_reference or len(samples)
        heldout = _reference_data(config, n_ref, _HELDOUT_SEED_OFFSET)
        baseline = _reference_data(config, len(samples), _BASELINE_SEED_OFFSET)
        mixture = data_lib.toy_mixture(config.data.name)
        result = toy_metrics(samples, heldout, baseline, mixture=mixture)
        num_labels = _sample_num_labels(config)
        if mixture is not None and num_labels is not None:
            # Conditional / guided samples were drawn for labels i mod K: how often is the requested
            # component the most likely one?
            result["label_accuracy"] = float(np.mean(assign_components(samples, mixture) ==
                                                     np.arange(len(samples)) % num_labels))  # fmt: skip
    else:
        result = image_metrics(samples, config)
        result.update(image_eval(config, workdir, samples))
    return _write_eval(workdir, {"data": config.data.name, "checkpoint_step": step, **result})


def _write_eval(workdir: str, result: dict[str, Any]) -> dict[str, Any]:
    if _is_main():
        with open(os.path.join(workdir, "eval.json"), "w") as f:
            json.dump(result, f, indent=2)
    return result


def _sample_num_labels(config) -> int | None:
    """K when samples are drawn for labels i mod K (a class-conditional model or classifier guidance)."""
    if config.sampling.classifier_scale:  # the classifier's class count, from its saved config (no restore)
        with open(os.path.join(config.sampling.classifier_workdir, CHECKPOINT_DIR, "config.json")) as f:
            return int(json.load(f)["model"]["num_classes"])
    return config.model.num_classes


def classifier_eval(config: ml_collections.ConfigDict, workdir: str, *, num_examples: int = 2000) -> dict[str, Any]:
    """A noise-aware classifier's accuracy argmax f(x_t, t) = y on held-out labelled data (toys: fresh
    points; images: the test split), x_t ~ q(x_t | x_0) at t in {0, T/4, T/2, 3T/4, T-1}."""
    model, schedule, _, params, step = _restore_ema_params(config, workdir)
    if config.data.name in data_lib.TOY_DATASETS:
        x, y = data_lib.toy(config.data.name, num_examples, seed=config.seed + _HELDOUT_SEED_OFFSET)
        x = np.asarray(x, np.float32)
    else:
        images, y = _test_split(config)
        x = image_eval_lib.to_model_range(images[:num_examples])
        y = None if y is None else y[:num_examples]
    if y is None:
        raise ValueError(f"data set {config.data.name!r} has no labels: a classifier cannot be evaluated on it")
    T = schedule.num_timesteps
    ts = sorted({0, T // 4, T // 2, 3 * T // 4, T - 1})

    @jax.jit
    def accuracy(key, t):
        tb = jnp.full((x.shape[0],), t, jnp.int32)
        x_t = diffusion_lib.q_sample(schedule, jnp.asarray(x), tb, jax.random.normal(key, x.shape))
        logits = model.apply({"params": params}, x_t, tb, train=False)
        return jnp.mean((jnp.argmax(logits, -1) == jnp.asarray(y)).astype(jnp.float32))

    key = _key(config, _EVAL_STREAM)
    acc = {str(t): float(accuracy(jax.random.fold_in(key, t), t)) for t in ts}
    return {"data": config.data.name, "checkpoint_step": step, "objective": "noisy_classifier",
            "accuracy_at_t": acc, "num_examples": int(len(y))}  # fmt: skip
