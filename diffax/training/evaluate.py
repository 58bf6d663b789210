"""Sampling and evaluation of a trained run: ``sample(exp, workdir)``, ``evaluate(exp, workdir)``.

Workdir files written here, each atomically (`diffax._util.write_atomic`: a crash leaves the old file or the new one)::

    samples.npz   samples (N, ...) of the EMA parameters (float32 toys, uint8 images) and labels i mod K
    samples.npy   float samples, for toys and up to NPY_MAX_IMAGES images      samples.png   their picture
    samples/part-<fingerprint>-<first>-<last>.npz   finished chunks, with their indices (`sample_parts`)
    eval.json     toy data: distances to held-out data, mode weights (`diffax.evaluation.toys`);
                  images: sample statistics, test bits/dim (over every device), classifier FID
                  (`diffax.evaluation.images`), and with eval.inception_weights FID / IS / KID of the first
                  eval.num_samples samples with the FID Inception-v3 (`evaluate_images.inception_eval`:
                  fid_num_samples, inception_weights_sha256, fid_reference and its source);
                  a noise-aware classifier: its accuracy at several t
    fid_reference/<data>-<key>.npz   cached Inception statistics of the training split (per images + weights)

Sample i depends only on (seed, i): its noise comes from ``fold_in(key, i)`` and its label is i mod K
(`sampler_builders.per_example_sampler`), so the chunk size (sampling.batch_size) changes the samples only by
float32 rounding (README: rtol 1e-5 / atol 1e-6), and evaluation knows every sample's label from its index.
"""

from __future__ import annotations

import io
import json
import os
from typing import Any

import jax.numpy as jnp
import numpy as np

from diffax import data as data_lib
from diffax._util import npz_bytes, write_atomic
from diffax.evaluation import toys
from diffax.evaluation.images import to_uint8
from diffax.training import builders, plots, sample_parts
from diffax.training.restore import Run, checked_latest_step, restore_ema, restore_params, stream_key
from diffax.training.sampler_builders import per_example_sampler
from diffax.training.evaluate_images import (check_eval_files, classifier_eval, image_eval_metrics, image_metrics,
                                             sample_labels)
from diffax.training.train import all_finite, is_main_process

__all__ = ["generate", "sample", "evaluate", "check_eval_files", "classifier_eval", "image_metrics", "sample_labels"]

PARTS_DIR = "samples"  # finished chunks of a sampling run: samples/part-<fingerprint>-<first>-<last>.npz
NPY_MAX_IMAGES = 10_000  # samples.npy (float) is also written for toys and up to this many images
# Seeds of the toy data sets used by `evaluate` (offsets of the seed, far from the training set's).
HELDOUT_SEED_OFFSET, BASELINE_SEED_OFFSET = 1_000_003, 2_000_003


def guidance_classifier(exp: builders.Experiment) -> tuple[Any, Any, int] | None:
    """(module, ema_params, checkpoint step) of sampling.classifier_workdir when sampling.classifier_scale != 0,
    else None."""
    s = exp.sampling
    if not s.classifier_scale:
        return None
    if not s.classifier_workdir:
        raise ValueError(f"sampling.classifier_scale={s.classifier_scale} needs sampling.classifier_workdir (the "
                         "workdir of a training.objective='noisy_classifier' run), got None")  # fmt: skip
    run = restore_ema(s.classifier_workdir)
    if run.experiment.objective != "noisy_classifier":
        raise ValueError(f"{s.classifier_workdir} holds a {run.experiment.objective!r} run, not a "
                         "'noisy_classifier' one")  # fmt: skip
    return run.experiment.model, run.params, run.step


def generate(exp_or_config, workdir: str, *, run: Run | None = None) -> tuple[np.ndarray, int]:
    """(sampling.num_samples samples of the newest intact checkpoint's EMA parameters, its step), drawn in
    chunks of sampling.batch_size over every device and process (`sample_parts.draw_samples`); finished chunks
    are kept in ``workdir/samples/`` and reused by a restarted or repeated call with the same settings (any
    sampling.batch_size, device count or process count: each part holds the indices of its samples).
    ``run``: parameters already restored (`restore_params`) to sample instead of restoring them here.
    Raises FloatingPointError on non-finite parameters or samples (nothing is written then)."""
    exp = builders.as_experiment(exp_or_config)
    run = restore_params(exp, workdir) if run is None else run
    if not bool(all_finite(run.params)):
        raise FloatingPointError(f"the EMA parameters of checkpoint {run.step} in {workdir} are not finite")
    classifier = guidance_classifier(exp)
    sample_labeled, num_labels = exp.sampler(None if classifier is None else classifier[:2])
    n, chunk = exp.sampling.num_samples, exp.sampling.batch_size
    # What sample i depends on (with a guiding classifier: its checkpoint step too), not the chunk size
    # (sampling.batch_size) nor the device or process count, so a resumed run on another topology reuses the
    # parts (`sample_parts.draw_samples`) and a retrained classifier does not.
    classifier_step = () if classifier is None else (("classifier_step", classifier[2]),)
    fp = sample_parts.fingerprint(*exp.sampling.fingerprint_parts, run.step, n, *classifier_step)
    try:
        x = sample_parts.draw_samples(per_example_sampler(sample_labeled, num_labels), run.params,
                                      stream_key(exp.seed, "sample"), n, chunk,
                                      parts_dir=os.path.join(workdir, PARTS_DIR), fp=fp,
                                      progress=is_main_process())  # fmt: skip
    except FloatingPointError as e:
        raise FloatingPointError(f"checkpoint {run.step}: {e}") from None
    return x, run.step


def _reference_data(exp: builders.Experiment, n: int, seed_offset: int) -> np.ndarray | None:
    """n fresh points of a toy data set (None for image data)."""
    if not exp.data.is_toy:
        return None
    return data_lib.toy(exp.data.name, n, seed=exp.seed + seed_offset)[0]


def sample(exp_or_config, workdir: str) -> np.ndarray:
    """Writes ``samples.npz`` (key 'samples': float32 for toy data, uint8 images; 'labels' (i mod K) for
    labelled samples), ``samples.npy`` (float, for toys and up to `NPY_MAX_IMAGES` images) and
    ``samples.png`` from the newest intact checkpoint's EMA params.

    The picture: an image grid, a 1-D histogram over the true density (mixtures) or the data, or
    a 2-D scatter over the data. Returns the samples.
    """
    exp = builders.as_experiment(exp_or_config)
    x, step = generate(exp, workdir)
    if is_main_process():
        labels = sample_labels(exp)
        arrays = {"samples": x.astype(np.float32) if exp.data.is_toy else to_uint8(x)}
        if labels is not None:
            arrays["labels"] = labels.astype(np.int32)
        write_atomic(os.path.join(workdir, "samples.npz"), npz_bytes(**arrays))
        if exp.data.is_toy or len(x) <= NPY_MAX_IMAGES:
            npy = io.BytesIO()
            np.save(npy, x)
            write_atomic(os.path.join(workdir, "samples.npy"), npy.getvalue())
        density = None
        mix = data_lib.toy_mixture(exp.data.name) if exp.data.is_toy else None
        if mix is not None and x.shape[1] == 1:
            density = lambda g: np.exp(np.asarray(mix.log_prob(jnp.asarray(g, jnp.float32)[:, None])))  # noqa: E731
        ref = _reference_data(exp, min(len(x), 5000), HELDOUT_SEED_OFFSET)
        plots.save_samples_figure(os.path.join(workdir, "samples.png"), x, data=ref, density=density,
                                  title=f"{exp.data.name}: {len(x)} samples, step {step}")  # fmt: skip
    return x


def evaluate(exp_or_config, workdir: str, *, samples: np.ndarray | None = None,
             inception_variables: dict | None = None) -> dict[str, Any]:
    """Writes ``workdir/eval.json`` and returns it.

    Toy data: `toys.toy_metrics` between the samples (``samples``, or fresh ones from the latest
    checkpoint) and ``eval.num_reference`` held-out points (default: as many as the samples),
    beside the data-vs-held-out baseline; for labelled samples (i mod K) of a mixture, label_accuracy.
    Images: `image_metrics` and `image_eval_metrics` (bits/dim, classifier FID, Inception FID / IS / KID).
    A noisy classifier: `classifier_eval`. The files eval.* names (classifier, Inception weights) are read
    first, before any sample is drawn (`check_eval_files`; ``inception_variables``: already loaded by it).
    """
    exp = builders.as_experiment(exp_or_config)
    if exp.objective == "noisy_classifier":
        return _write_eval(workdir, classifier_eval(exp, workdir, HELDOUT_SEED_OFFSET))
    if not exp.data.is_toy and inception_variables is None:
        inception_variables = check_eval_files(exp)
    # Image models restore the EMA parameters once, for the samples and the bits/dim alike: both then come
    # from the same checkpoint even if a trainer writes a newer one meanwhile.
    run = None
    if not exp.data.is_toy and (samples is None or exp.eval.bpd_num_examples):
        run = restore_params(exp, workdir, purpose="eval")
    if samples is None:
        samples, step = generate(exp, workdir, run=run)
    else:
        step = checked_latest_step(exp, workdir) if run is None else run.step
    samples = np.asarray(samples, np.float64)
    if exp.data.is_toy:
        heldout = _reference_data(exp, exp.eval.num_reference or len(samples), HELDOUT_SEED_OFFSET)
        baseline = _reference_data(exp, len(samples), BASELINE_SEED_OFFSET)
        labels = sample_labels(exp)
        result = toys.toy_metrics(samples, heldout, baseline, mixture=data_lib.toy_mixture(exp.data.name),
                                  labels=None if labels is None else labels[: len(samples)])  # fmt: skip
    else:
        result = image_metrics(samples)
        result.update(image_eval_metrics(exp, workdir, samples, run=run, inception_variables=inception_variables))
    return _write_eval(workdir, {"data": exp.data.name, "checkpoint_step": step, **result})


def _write_eval(workdir: str, result: dict[str, Any]) -> dict[str, Any]:
    if is_main_process():
        write_atomic(os.path.join(workdir, "eval.json"), json.dumps(result, indent=2))
    return result
