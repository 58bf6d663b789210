"""The training loop: ``train_and_evaluate(experiment_or_config, workdir)``.

Workdir layout::

    checkpoints/<step>/   Orbax checkpoints (TrainState + data position), the last K kept
    checkpoints/config.json   the run's config
    tensorboard/          event files (tensorboardX)        metrics.jsonl   one line per logged step
    loss.png              loss curve (end of training)      samples_<step>.png   at training.sample_every

One trainer per workdir: training holds ``workdir/.lock`` (`diffax.workdir_lock`; a second trainer is
refused at once; a stale lock, of a dead process on this host or not refreshed by its holder's heartbeat
for training.lock_stale_after_s, taken over). The run's config is saved with every
checkpoint; resuming with a config whose model / diffusion / data keys differ is refused
(`restore.check_compatible`). Each checkpoint carries a checksum per array; a damaged latest one is
reported (step, array) and training resumes from the newest intact one.

Resumption: the newest intact checkpoint in ``workdir/checkpoints`` is restored (state, optimizer, EMA,
RNG and the data iterator's position) and training continues to ``training.num_steps``; since the
step key is ``fold_in(rng, step)`` and the data order is resumed, a run interrupted and resumed gives
bitwise the parameters of an uninterrupted one (on the same machine).

Non-finite loss: metrics are checked (`step.check_finite`) every ``log_every`` steps and before
every save, and the parameters before every save, so a NaN/Inf state is never checkpointed;
training stops with ``FloatingPointError`` and the last good checkpoint stays.
Only process 0 writes logs and pictures; every process takes part in checkpointing.
"""

from __future__ import annotations

import os
import time
from typing import Mapping

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from diffax import device_mesh
from diffax.checkpoint import Checkpointer
from diffax.training import builders, plots, step as step_lib
from diffax.training.logging import MetricWriter, read_metrics
from diffax.training.restore import CHECKPOINT_DIR, abstract_state, check_compatible, initial_state, stream_key
from diffax.training.sampler_builders import per_example_sampler
from diffax.workdir_lock import WorkdirLock
from diffax.training.state import TrainState

__all__ = ["train_and_evaluate", "all_finite"]


def is_main_process() -> bool:
    return jax.process_index() == 0


@jax.jit
def all_finite(tree) -> jax.Array:
    """True iff every leaf of ``tree`` is finite (one compiled reduction)."""
    return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)]))


def _mean_metrics(pending: list[Mapping[str, jax.Array]]) -> dict[str, float]:
    host = jax.device_get(pending)
    return {k: float(np.mean([np.asarray(m[k]) for m in host])) for k in host[-1]}


def _compiled_train_step(exp: builders.Experiment, mesh):
    t = exp.train
    return step_lib.jit_train_step(
        step_lib.make_train_step(exp.loss_fn, exp.optimizer, ema_decay=t.ema_decay, lr_schedule=exp.lr_schedule,
                                 importance_sampling=exp.importance_sampling, ema_warmup=t.ema_warmup),
        mesh,
    )  # fmt: skip


def _picture_sampler(exp: builders.Experiment):
    """``fn(params, key) -> 64 samples`` (jitted) for the pictures at training.sample_every, or None."""
    if not exp.train.sample_every:
        return None
    sample_labeled, num_labels = exp.sampler()
    sample_fn = per_example_sampler(sample_labeled, num_labels)
    return jax.jit(lambda params, key: sample_fn(params, key, jnp.arange(64)))


def _save_loss_curve(workdir: str) -> None:
    records = [r for r in read_metrics(workdir) if "loss" in r]
    if records:
        plots.save_loss_curve(os.path.join(workdir, "loss.png"), [r["step"] for r in records],
                              [r["loss"] for r in records])  # fmt: skip


def train_and_evaluate(exp_or_config: builders.Experiment | ml_collections.ConfigDict, workdir: str) -> TrainState:
    """Trains to ``training.num_steps`` (resuming from ``workdir`` if it holds a checkpoint).

    Takes an `Experiment` (or a config, built here). Returns the final TrainState. Raises
    FloatingPointError on a non-finite loss or parameters (after keeping the last good checkpoint).
    """
    exp = builders.as_experiment(exp_or_config)
    os.makedirs(workdir, exist_ok=True)
    with WorkdirLock(workdir, stale_after_s=exp.train.lock_stale_after_s) as lock:  # one trainer per workdir
        return _train(exp, workdir, lock)


def _restore_or_init(exp: builders.Experiment, ckpt: Checkpointer, batches, mesh) -> tuple[TrainState, bool]:
    """(the newest intact checkpoint's state, True) after checking the run's saved config against
    ``exp``'s and setting the data position; (the step-0 state, False) on an empty workdir."""
    saved = ckpt.read_config()
    if saved is not None:
        check_compatible(saved, exp.config, purpose="resume")
    restored = ckpt.restore_latest_intact(abstract_state(exp, mesh))
    if restored is None:
        return initial_state(exp, mesh), False
    state, data_state, _ = restored
    batches.set_state(data_state)
    return state, True


def _train(exp: builders.Experiment, workdir: str, lock: WorkdirLock) -> TrainState:
    t = exp.train
    mesh = device_mesh.make_mesh()
    batches = exp.make_batches("train")
    train_step = _compiled_train_step(exp, mesh)
    ckpt = Checkpointer(os.path.join(workdir, CHECKPOINT_DIR), max_to_keep=t.keep_checkpoints, config=exp.config)
    try:
        state, resumed = _restore_or_init(exp, ckpt, batches, mesh)
    except BaseException:
        ckpt.close()
        raise
    start = int(jax.device_get(state.step))
    if start >= t.num_steps and is_main_process():
        print(f"diffax: the checkpoint in {ckpt.directory} is at step {start} >= training.num_steps={t.num_steps}: "
              "nothing to train (raise training.num_steps to train on)", flush=True)  # fmt: skip
    writer = MetricWriter(workdir, enabled=is_main_process(), resume_step=start if resumed else None)
    picture_fn = _picture_sampler(exp)
    from tqdm import tqdm

    bar = tqdm(total=t.num_steps, initial=start, disable=not is_main_process(), desc="train", unit="step",
               dynamic_ncols=True, mininterval=1.0)  # fmt: skip
    pending: list[Mapping[str, jax.Array]] = []
    last_saved = ckpt.latest_step()
    t_log = time.perf_counter()
    try:
        iterator = iter(batches)
        for i in range(start + 1, t.num_steps + 1):
            state, metrics = train_step(state, device_mesh.shard_batch(next(iterator), mesh))
            pending.append(metrics)
            bar.update(1)
            is_log = i % t.log_every == 0 or i == t.num_steps
            is_save = i % t.checkpoint_every == 0 or i == t.num_steps
            if is_log or is_save:
                step_lib.check_finite(jax.tree.map(lambda *v: jnp.stack(v), *pending), i)
            if is_log:
                now = time.perf_counter()
                scalars = _mean_metrics(pending)
                scalars["steps_per_sec"] = len(pending) / max(now - t_log, 1e-9)
                writer.write_scalars(i, scalars, steps_averaged=len(pending))  # < log_every after a resume
                t_log, pending = now, []
                bar.set_postfix(loss=f"{scalars['loss']:.4g}")
            if is_save:
                if not bool(all_finite(state.params)) or not bool(all_finite(state.ema_params)):
                    raise FloatingPointError(f"non-finite parameters at step {i} (stopping; not saved)")
                if not device_mesh.all_processes(lock.still_ours()):  # taken over as stale: never two writers
                    raise lock.lost_error()
                ckpt.save(i, state, data_state=batches.get_state())
                last_saved = i
            if picture_fn is not None and i % t.sample_every == 0:
                x = np.asarray(jax.device_get(picture_fn(state.ema_params,
                                                         jax.random.fold_in(stream_key(exp.seed, "train_sample"), i))))
                if is_main_process():
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
        if is_main_process():
            _save_loss_curve(workdir)
    return state
