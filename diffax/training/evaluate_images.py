"""Evaluation of image models and noise-aware classifiers for `diffax.training.evaluate` (eval.json's
image and classifier entries), on a built `Experiment` and the run's EMA parameters."""

from __future__ import annotations

import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from diffax import data as data_lib
from diffax import diffusion as diffusion_lib
from diffax.evaluation import images as image_eval
from diffax.training import builders
from diffax.training.restore import read_run_config, restore_params, stream_key
from diffax.training.train import is_main_process

__all__ = ["image_metrics", "test_split", "image_eval_metrics", "sample_labels", "classifier_eval"]


def sample_labels(exp: builders.Experiment) -> np.ndarray | None:
    """The labels i mod K the samples are drawn for (K: the model's classes, or the guiding classifier's,
    read from its saved config), or None for unlabeled samples."""
    k = exp.num_classes
    if exp.sampling.classifier_scale:
        k = builders.build(read_run_config(exp.sampling.classifier_workdir)).model.num_classes
    return None if k is None else np.arange(exp.sampling.num_samples) % k


def test_split(exp: builders.Experiment) -> tuple[np.ndarray, np.ndarray | None]:
    """The held-out images (and labels) of the run's data set: its test split ('npz': its one split)."""
    d = exp.data
    split = "train" if d.name == "npz" else "test"  # an .npz holds one split
    return data_lib.load_array(d.name, split=split, data_dir=d.data_dir, path=d.path)


def image_metrics(samples: np.ndarray) -> dict[str, Any]:
    """Sample statistics of images: per-channel mean and std and the fraction inside [-1, 1]."""
    axes = tuple(range(samples.ndim - 1))
    return {
        "channel_mean": np.mean(samples, axis=axes).tolist(),
        "channel_std": np.std(samples, axis=axes).tolist(),
        "fraction_in_range": float(np.mean(np.abs(samples) <= 1.0)),
        "num_samples": int(len(samples)),
    }


def image_eval_metrics(exp: builders.Experiment, workdir: str, samples: np.ndarray) -> dict[str, Any]:
    """Test-split bits/dim (eval.bpd_num_examples > 0) and classifier FID (eval.classifier_path set)
    of an image model, via `diffax.evaluation.images`. A class-conditional model trained with label
    dropout (p_uncond > 0) is scored unconditionally (null class), one without it on the true labels.
    """
    e, out = exp.eval, {}
    if not (e.bpd_num_examples or e.classifier_path):
        return out
    images, labels = test_split(exp)
    if e.bpd_num_examples:
        n = min(e.bpd_num_examples, len(images))
        run = restore_params(exp, workdir, purpose="eval")
        y = None
        if exp.num_classes is not None:
            unconditional = exp.p_uncond > 0 or labels is None
            y = np.full((n,), exp.num_classes, np.int32) if unconditional else labels[:n]
            out["bpd_conditioning"] = "null_class" if unconditional else "true_labels"
        t0 = time.perf_counter()
        bpd = image_eval.test_bits_per_dim(
            exp.model.apply, run.params, exp.schedule, images[:n], stream_key(exp.seed, "eval"), labels=y,
            batch_size=e.bpd_batch_size, mean_type=exp.mean_type, var_type=exp.var_type, progress=is_main_process(),
        )  # fmt: skip
        out.update(test_bpd=bpd["bpd"], test_bpd_stderr=bpd["bpd_stderr"], test_prior_bpd=bpd["prior_bpd"],
                   test_decoder_bpd=bpd["decoder_bpd"], bpd_num_examples=bpd["num_examples"],
                   bpd_seconds=time.perf_counter() - t0)  # fmt: skip
    if e.classifier_path:
        n_ref = e.fid_num_reference or len(images)
        labels_s = sample_labels(exp)
        labels_s = None if labels_s is None else labels_s[: len(samples)]
        out.update(image_eval.classifier_metrics(samples, e.classifier_path, images[:n_ref], sample_labels=labels_s))
    return out


def classifier_eval(exp: builders.Experiment, workdir: str, heldout_seed_offset: int, *,
                    num_examples: int = 2000) -> dict[str, Any]:  # fmt: skip
    """A noise-aware classifier's accuracy argmax f(x_t, t) = y on held-out labelled data (toys: fresh
    points; images: the test split), x_t ~ q(x_t | x_0) at t in {0, T/4, T/2, 3T/4, T-1}."""
    run = restore_params(exp, workdir, purpose="eval")
    if exp.data.is_toy:
        x, y = data_lib.toy(exp.data.name, num_examples, seed=exp.seed + heldout_seed_offset)
        x = np.asarray(x, np.float32)
    else:
        images, y = test_split(exp)
        x = image_eval.to_model_range(images[:num_examples])
        y = None if y is None else y[:num_examples]
    if y is None:
        raise ValueError(f"data set {exp.data.name!r} has no labels: a classifier cannot be evaluated on it")
    T = exp.schedule.num_timesteps
    ts = sorted({0, T // 4, T // 2, 3 * T // 4, T - 1})

    @jax.jit
    def accuracy(key, t):
        tb = jnp.full((x.shape[0],), t, jnp.int32)
        x_t = diffusion_lib.q_sample(exp.schedule, jnp.asarray(x), tb, jax.random.normal(key, x.shape))
        logits = exp.model.apply({"params": run.params}, x_t, tb, train=False)
        return jnp.mean((jnp.argmax(logits, -1) == jnp.asarray(y)).astype(jnp.float32))

    key = stream_key(exp.seed, "eval")
    acc = {str(t): float(accuracy(jax.random.fold_in(key, t), t)) for t in ts}
    return {"data": exp.data.name, "checkpoint_step": run.step, "objective": "noisy_classifier",
            "accuracy_at_t": acc, "num_examples": int(len(y))}  # fmt: skip
