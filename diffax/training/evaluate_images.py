"""Evaluation of image models and noise-aware classifiers for `diffax.training.evaluate` (eval.json's
image and classifier entries), on a built `Experiment` and the run's EMA parameters.

Image models (`image_eval_metrics`): test-split bits/dim of the full VLB (eval.bpd_num_examples), classifier
FID (eval.classifier_path), and FID / Inception Score / KID with the FID Inception-v3 (eval.inception_weights,
`inception_eval`). The bits/dim and the Inception features are computed on every device of every process
(`diffax.evaluation.bits_per_dim`, `diffax.evaluation.inception_metrics`, over `device_mesh.make_mesh()`).

Inception reference statistics of the training split are computed once and cached in
``workdir/fid_reference/<data.name>-<key>.npz`` (key: a hash of the reference images' bytes and of the
weights file), or read from eval.fid_reference (a pytorch-fid ``.npz`` with ``mu``/``sigma``).
"""

from __future__ import annotations

import os
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from diffax import data as data_lib
from diffax import device_mesh
from diffax._util import sha256_of_array
from diffax import diffusion as diffusion_lib
from diffax.evaluation import images as image_eval
from diffax.evaluation import inception_metrics
from diffax.evaluation.bits_per_dim import sharded_bits_per_dim
from diffax.models.inception import InceptionV3
from diffax.training import builders, sample_parts
from diffax.training.restore import Run, read_run_config, restore_params, stream_key
from diffax.training.train import is_main_process

__all__ = ["image_metrics", "test_split", "train_split", "image_eval_metrics", "check_eval_files", "inception_eval",
           "fid_reference", "fid_reference_path", "sample_labels", "classifier_eval", "FID_REFERENCE_DIR"]  # fmt: skip

FID_REFERENCE_DIR = "fid_reference"  # workdir/fid_reference/<data.name>-<key>.npz: cached Inception statistics


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


def train_split(exp: builders.Experiment) -> np.ndarray:
    """The training images of the run's data set (the FID reference of the papers)."""
    d = exp.data
    return data_lib.load_array(d.name, split="train", data_dir=d.data_dir, path=d.path)[0]


def image_metrics(samples: np.ndarray) -> dict[str, Any]:
    """Sample statistics of images: per-channel mean and std and the fraction inside [-1, 1]."""
    axes = tuple(range(samples.ndim - 1))
    return {
        "channel_mean": np.mean(samples, axis=axes).tolist(),
        "channel_std": np.std(samples, axis=axes).tolist(),
        "fraction_in_range": float(np.mean(np.abs(samples) <= 1.0)),
        "num_samples": int(len(samples)),
    }


def image_eval_metrics(exp: builders.Experiment, workdir: str, samples: np.ndarray, *,
                       run: Run | None = None, inception_variables: dict | None = None) -> dict[str, Any]:
    """Test-split bits/dim (eval.bpd_num_examples > 0), classifier FID (eval.classifier_path set) and
    Inception FID / IS / KID (eval.inception_weights set, `inception_eval`) of an image model.

    Bits/dim: `sharded_bits_per_dim` on the first eval.bpd_num_examples test images over every device,
    image i's noise from fold_in(eval key, i). A class-conditional model trained with label dropout
    (p_uncond > 0) is scored unconditionally (null class), one without it on the true labels.
    ``run``: the restored parameters to score (default: the newest intact checkpoint's EMA parameters);
    ``inception_variables``: the weights of eval.inception_weights already loaded (`check_eval_files`).
    """
    e, out = exp.eval, {}
    if e.bpd_num_examples or e.classifier_path:
        images, labels = test_split(exp)
    if e.bpd_num_examples:
        n = min(e.bpd_num_examples, len(images))
        run = restore_params(exp, workdir, purpose="eval") if run is None else run
        y = None
        if exp.num_classes is not None:
            unconditional = exp.p_uncond > 0 or labels is None
            y = np.full((n,), exp.num_classes, np.int32) if unconditional else labels[:n]
            out["bpd_conditioning"] = "null_class" if unconditional else "true_labels"
        t0 = time.perf_counter()
        bpd = sharded_bits_per_dim(
            exp.model.apply, run.params, exp.schedule, image_eval.to_model_range(images[:n]),
            stream_key(exp.seed, "eval"), device_mesh.make_mesh(), labels=y, batch_size=e.bpd_batch_size,
            mean_type=exp.mean_type, var_type=exp.var_type, progress=is_main_process(),
        )  # fmt: skip
        out.update(test_bpd=bpd["bpd"], test_bpd_stderr=bpd["bpd_stderr"], test_prior_bpd=bpd["prior_bpd"],
                   test_decoder_bpd=bpd["decoder_bpd"], bpd_num_examples=bpd["num_examples"],
                   bpd_seconds=time.perf_counter() - t0)  # fmt: skip
    if e.classifier_path:
        n_ref = e.classifier_fid_num_test or len(images)
        labels_s = sample_labels(exp)
        labels_s = None if labels_s is None else labels_s[: len(samples)]
        out.update(image_eval.classifier_metrics(samples, e.classifier_path, images[:n_ref], sample_labels=labels_s))
    if e.inception_weights:
        out.update(inception_eval(exp, workdir, samples, variables=inception_variables))
    return out


def check_eval_files(exp: builders.Experiment) -> dict | None:
    """Reads the files eval.* names before any sample is drawn, so that a missing or damaged one stops
    `evaluate` at once (one line naming the setting and the file) instead of after the sampling: the
    classifier of eval.classifier_path must exist, and the Inception weights of eval.inception_weights are
    loaded and returned (their variables, for `inception_eval`); None without eval.inception_weights."""
    e = exp.eval
    if e.classifier_path and not os.path.isfile(e.classifier_path):
        raise FileNotFoundError(f"eval.classifier_path={e.classifier_path}: no such file "
                                f"({os.path.abspath(e.classifier_path)}); expected a classifier saved by "
                                "experiments/train_classifier.py")  # fmt: skip
    if not e.inception_weights:
        return None
    return inception_metrics.load_inception(e.inception_weights)[1]


def fid_reference_path(workdir: str, data_name: str, images: np.ndarray, weights_sha256: str) -> str:
    """``workdir/fid_reference/<data_name>-<key>.npz``, key a hash of the reference images' bytes and the weights'
    SHA-256: other images or other weights never reuse a cached reference."""
    key = sample_parts.fingerprint(data_name, sha256_of_array(images, with_shape=True), weights_sha256)
    return os.path.join(workdir, FID_REFERENCE_DIR, f"{data_name}-{key}.npz")


def fid_reference(exp: builders.Experiment, workdir: str, model: Any, variables: Any, weights_sha256: str,
                  mesh: Any) -> tuple[inception_metrics.Reference, dict[str, Any]]:  # fmt: skip
    """The Inception `Reference` for FID / KID and how it was obtained (eval.json's ``fid_reference*`` entries).

    eval.fid_reference set: that file (pytorch-fid's ``mu``/``sigma`` .npz; KID only if it has ``features``).
    Otherwise the first eval.fid_num_train (0 = all) training images: read from
    ``workdir/fid_reference/<data.name>-<key>.npz`` when that exists (key: SHA-256 of the images' bytes and of
    the weights file, so other data or weights never reuse it), else computed over every device and process
    and written there by process 0.
    """
    e, d = exp.eval, exp.data
    if e.fid_reference:
        ref = inception_metrics.load_reference(e.fid_reference)
        return ref, {"fid_reference": os.path.abspath(e.fid_reference), "fid_reference_source": "file",
                     "fid_num_reference": ref.num_images}  # fmt: skip
    images = train_split(exp)
    images = images[: e.fid_num_train or len(images)]
    path = fid_reference_path(workdir, d.name, images, weights_sha256)
    info = {"fid_reference": path, "fid_num_reference": int(len(images))}
    ref = None
    if os.path.isfile(path):
        try:
            ref = inception_metrics.load_reference(path)
        except ValueError:  # a damaged cache file: compute it again
            ref = None
    if device_mesh.all_processes(ref is not None and ref.features is not None and ref.num_images == len(images)):
        return ref, {**info, "fid_reference_source": "cache"}
    ref = inception_metrics.reference_stats(images, model, variables, mesh, batch_size=e.fid_batch_size,
                                            progress=is_main_process())  # fmt: skip
    if is_main_process():
        os.makedirs(os.path.dirname(path), exist_ok=True)
        inception_metrics.save_reference(path, ref, dataset=d.name, split="train", weights_sha256=weights_sha256)
    return ref, {**info, "fid_reference_source": "computed"}


def inception_eval(exp: builders.Experiment, workdir: str, samples: np.ndarray, *, model: Any | None = None,
                   mesh: Any | None = None, variables: dict | None = None) -> dict[str, Any]:  # fmt: skip
    """FID, Inception Score and KID of the first eval.num_samples samples with the FID Inception-v3 at
    eval.inception_weights (`diffax.evaluation.inception_metrics.sample_metrics`), against `fid_reference`.

    The samples (floats in [-1, 1]) are quantised to uint8 first (`image_eval.to_uint8`, as the PNGs
    pytorch-fid reads). ``model`` (default ``InceptionV3()``: 299x299, as the papers) and ``mesh`` (default
    all devices) are for tests; ``variables``: the weights already loaded (default: read eval.inception_weights).
    Raises ValueError if fewer than eval.num_samples samples are given.
    Returns the metrics with fid_num_samples, the weights' path and SHA-256, the reference used and the time.
    """
    e = exp.eval
    if len(samples) < e.num_samples:
        raise ValueError(f"eval.num_samples={e.num_samples} samples are needed for FID / IS / KID but only "
                         f"{len(samples)} were drawn (sampling.num_samples={exp.sampling.num_samples}); draw at "
                         "least as many, or lower eval.num_samples (the papers use 50,000; FID depends on N)"
                         )  # fmt: skip
    t0 = time.perf_counter()
    if variables is None:
        variables = inception_metrics.load_inception(e.inception_weights)[1]
    model = model or InceptionV3()
    weights_sha256 = inception_metrics.file_sha256(e.inception_weights)
    mesh = device_mesh.make_mesh() if mesh is None else mesh
    reference, info = fid_reference(exp, workdir, model, variables, weights_sha256, mesh)
    u8 = image_eval.to_uint8(np.asarray(samples)[: e.num_samples])
    result = inception_metrics.sample_metrics(u8, reference, model, variables, mesh, batch_size=e.fid_batch_size,
                                              kid_seed=exp.seed, progress=is_main_process())  # fmt: skip
    n = result.pop("num_samples")
    return {**result, "fid_num_samples": n, "inception_weights": os.path.abspath(e.inception_weights),
            "inception_weights_sha256": weights_sha256, **info, "inception_seconds": time.perf_counter() - t0}


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
