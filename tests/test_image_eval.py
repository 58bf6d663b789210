"""Tests of image evaluation (test-split bits/dim: `diffax.evaluation.bits_per_dim.sharded_bits_per_dim`;
classifier FID: `diffax.evaluation.images`) and of `--mode=eval` for images through the entry point.

The bits/dim path is checked against `diffax.likelihood.vlb_bpd` called directly (the VLB itself is
tested against analytic values in test_likelihood.py): batching, padding, key handling and label
routing must not change a number. The classifier metrics are checked against
`diffax.evaluation.classifier_features`.
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import re
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from _compile import jit_once
from _processes import cpu_env
from diffax import likelihood, schedules
from diffax.evaluation import classifier_features
from diffax.evaluation import images as image_eval
from diffax.models import Classifier
from diffax.training import plots

H = 8
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _images(n, seed=0):
    return np.random.default_rng(seed).integers(0, 256, size=(n, H, H, 1), dtype=np.uint8)


def _linear_eps_model(variables, x_t, t, y=None, train=False):
    """eps_hat = c x_t + 0.01 y (a stand-in network; y routes the label into the output)."""
    out = variables["params"]["c"] * x_t
    if y is not None:
        out = out + 0.01 * y.astype(x_t.dtype).reshape((-1,) + (1,) * (x_t.ndim - 1))
    return out


def test_to_model_range_endpoints_and_dtype_error():
    x = image_eval.to_model_range(np.array([0, 255, 128], np.uint8))
    np.testing.assert_allclose(x, [-1.0, 1.0, 128 / 127.5 - 1], rtol=0, atol=1e-7)
    with pytest.raises(ValueError, match="uint8"):
        image_eval.to_model_range(np.zeros(3, np.float32))


def _per_batch_key_bits_per_dim(params, s, x, key, labels, batch_size):
    """The removed `images.test_bits_per_dim`'s keys: batch j of ``batch_size`` images (the last one
    zero-padded) noised with fold_in(key, j), so an image's noise depended on the batch size."""
    @jax.jit
    def batch(k, xb, yb):
        fn = lambda x_t, t: _linear_eps_model({"params": params}, x_t, t, y=yb)  # noqa: E731
        return likelihood.vlb_bpd(fn, s, k, xb)["total"]

    out = []
    for j, lo in enumerate(range(0, len(x), batch_size)):
        m = min(batch_size, len(x) - lo)
        xb = np.zeros((batch_size,) + x.shape[1:], np.float32)
        yb = np.zeros((batch_size,), np.int32)
        xb[:m], yb[:m] = x[lo : lo + m], labels[lo : lo + m]
        out.append(np.asarray(batch(jax.random.fold_in(key, j), xb, yb))[:m])
    return np.concatenate(out)


def test_sharded_bits_per_dim_equals_vlb_of_each_image_alone():
    """`sharded_bits_per_dim` (diffax's one bits/dim: rows over the mesh, image i's noise from fold_in(key, i)):
    every per-image total equals `likelihood.vlb_bpd` on that image alone with key fold_in(key, i) (float32:
    rtol 1e-6), for batch sizes 1, 2 and 3 (the last batch padded for 2 and 3), so an image's bits/dim
    does not depend on the batch it is in; labels reach the network (negative control: other labels give
    other totals). Negative control of the batch-size check: keys per batch (the removed
    `images.test_bits_per_dim`) give images other totals at batch sizes 2 and 3, by far more than 1e-6.
    8 devices: tests/test_inception_metrics.py and the CLI test below."""
    from diffax.device_mesh import make_mesh
    from diffax.evaluation.bits_per_dim import sharded_bits_per_dim

    s = schedules.linear(20, 1e-4, 0.02)
    params = {"c": jnp.asarray(0.3)}
    x, labels = image_eval.to_model_range(_images(5)), np.array([0, 1, 2, 0, 1], np.int32)
    key, mesh = jax.random.PRNGKey(4), make_mesh(jax.devices()[:1])

    @jax.jit
    def alone(k, xi, yi):
        fn = lambda x_t, t: _linear_eps_model({"params": params}, x_t, t, y=yi)  # noqa: E731
        return likelihood.vlb_bpd(fn, s, k, xi)["total"][0]

    want = np.array([alone(jax.random.fold_in(key, i), x[i : i + 1], labels[i : i + 1]) for i in range(5)])
    for batch_size in (1, 2, 3):
        out = sharded_bits_per_dim(_linear_eps_model, params, s, x, key, mesh, labels=labels, batch_size=batch_size)
        np.testing.assert_allclose(out["per_example"], want, rtol=1e-6, err_msg=f"batch_size={batch_size}")
        assert out["num_examples"] == 5
        np.testing.assert_allclose(out["bpd"], np.mean(want), rtol=1e-6)
        np.testing.assert_allclose(out["bpd_stderr"], np.std(want, ddof=1) / math.sqrt(5), rtol=1e-5)
    other = sharded_bits_per_dim(_linear_eps_model, params, s, x, key, mesh, labels=labels + 3, batch_size=2)
    assert np.min(np.abs(np.asarray(other["per_example"]) - want)) > 1e-4
    by_batch = {b: _per_batch_key_bits_per_dim(params, s, x, key, labels, b) for b in (2, 3)}
    assert np.max(np.abs(by_batch[2] - by_batch[3]) / want) > 1e3 * 1e-6


def test_one_bits_per_dim_implementation():
    """Every bits/dim function diffax.evaluation exports is `bits_per_dim.sharded_bits_per_dim` (a second one,
    `images.test_bits_per_dim`, keyed its noise per batch: one image scored 92.8 at batch size 2 and 63.8 at
    3; the batch-size independence of this one is tested above and through the CLI below)."""
    import pkgutil

    import diffax.evaluation
    from diffax.evaluation import bits_per_dim

    found = {}
    for info in pkgutil.iter_modules(diffax.evaluation.__path__):
        module = __import__(f"diffax.evaluation.{info.name}", fromlist=["_"])
        names = [n for n in getattr(module, "__all__", ()) if "bits_per_dim" in n]
        found.update({f"{info.name}.{n}": getattr(module, n) for n in names})
    assert found == {"bits_per_dim.sharded_bits_per_dim": bits_per_dim.sharded_bits_per_dim}


def test_bits_per_dim_rejects_bad_input():
    """One message per bad argument, before any device work: label count, batch size, no images."""
    from diffax.device_mesh import make_mesh
    from diffax.evaluation.bits_per_dim import sharded_bits_per_dim

    s, mesh = schedules.linear(5, 1e-4, 0.02), make_mesh(jax.devices()[:1])
    x = image_eval.to_model_range(_images(3))
    with pytest.raises(ValueError, match="labels has 2 entries for 3 images"):
        sharded_bits_per_dim(_linear_eps_model, {"c": 0.0}, s, x, jax.random.PRNGKey(0), mesh,
                             labels=np.zeros(2, np.int32))  # fmt: skip
    with pytest.raises(ValueError, match="batch_size must be an int >= 1, got 0"):
        sharded_bits_per_dim(_linear_eps_model, {"c": 0.0}, s, x, jax.random.PRNGKey(0), mesh, batch_size=0)
    with pytest.raises(ValueError, match="need at least one row"):
        sharded_bits_per_dim(_linear_eps_model, {"c": 0.0}, s, x[:0], jax.random.PRNGKey(0), mesh)


@pytest.fixture(scope="module")
def classifier_file(tmp_path_factory):
    model = Classifier(num_classes=3, ch=4, ch_mult=(1, 2), num_res_blocks=1)
    # An rbg key: the init compiles ~4x faster than with threefry (any weights serve these checks).
    params = jit_once(model.init, jax.random.key(0, impl="unsafe_rbg"), jnp.zeros((1, H, H, 1)))
    path = tmp_path_factory.mktemp("clf") / "classifier.msgpack"
    classifier_features.save_classifier(path, model, params)
    return str(path), model, params


def test_classifier_metrics_match_feature_fid(classifier_file):
    """FID of the reference images themselves is 0 (up to the sqrtm's rounding, < 1e-6); FID and
    accuracy equal `classifier_features.feature_fid` / `classifier_accuracy` called directly (rtol 1e-9)."""
    path, model, params = classifier_file
    ref = _images(200, seed=1)
    same = image_eval.classifier_metrics(image_eval.to_model_range(ref), path, ref)
    assert abs(same["classifier_fid"]) < 1e-6
    samples = np.random.default_rng(2).normal(size=(100, H, H, 1)).astype(np.float32) * 0.5
    labels = np.arange(100) % 3
    out = image_eval.classifier_metrics(samples, path, ref, sample_labels=labels)
    stats = classifier_features.feature_stats(image_eval.to_model_range(ref), model=model, params=params)
    clipped = np.clip(samples, -1, 1)  # classifier_metrics clips to the data range first
    want = classifier_features.feature_fid(clipped, stats, model=model, params=params)
    np.testing.assert_allclose(out["classifier_fid"], want, rtol=1e-9)
    assert out["classifier_fid"] > 100 * 1e-6  # negative control: other images are far from 0
    assert out["sample_accuracy"] == classifier_features.classifier_accuracy(clipped, labels, model=model,
                                                                             params=params)  # fmt: skip
    assert out["num_fid_samples"] == 100 and out["num_reference"] == 200
    # A reference built once and reused gives the same numbers as the one-shot call.
    reference = image_eval.classifier_reference(path, ref)
    assert image_eval.reference_metrics(samples, reference, sample_labels=labels) == out


@pytest.mark.slow
def test_eval_mode_writes_bpd_and_fid_for_mnist(tmp_path, classifier_file):
    """`--mode=train,sample,eval` on mock MNIST with a tiny UNet (T = 10): eval.json holds the test-split
    bits/dim (equal to the mean of `likelihood.vlb_bpd` of each image alone on the checkpoint's EMA params
    with key fold_in(eval key, i), rtol 1e-6) and the classifier FID (equal to classifier_metrics on
    samples.npy, rtol 1e-9). The same run checks the image path of train / sample: samples.npy and
    samples.npz (uint8 of the same samples), samples.png's grid, metrics.jsonl's first loss, and the
    checkpoint directory."""
    import os

    import matplotlib.pyplot as plt

    import tensorflow_datasets as tfds

    from diffax import main as main_lib
    from diffax import data
    from diffax.training import builders, presets, restore

    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    config = presets.load_config(os.path.join(repo, "configs", "mnist.py"))
    config.data.name, config.data.path = "mnist", None
    config.model.ch, config.model.ch_mult, config.model.num_res_blocks = 8, (1,), 1
    config.model.attn_resolutions, config.model.num_groups = (), 4
    config.diffusion.num_timesteps = 10  # DDPM's betas kept at T = 10 (x_T is not N(0, I): allowed explicitly)
    config.diffusion.beta_start, config.diffusion.beta_end, config.diffusion.max_terminal_alpha_bar = 1e-4, 0.02, 1.0
    config.training.num_steps, config.training.batch_size, config.training.sample_every = 2, 8, 0
    config.training.log_every = 1
    config.sampling.num_samples = 6
    config.eval.bpd_num_examples, config.eval.bpd_batch_size = 3, 2
    # A 28x28 classifier (the 8x8 fixture's weights do not fit 28x28 inputs: build one here).
    model = Classifier(num_classes=10, ch=4, ch_mult=(1, 2), num_res_blocks=1)
    # An rbg key: the init compiles ~4x faster than with threefry (any weights serve these checks).
    params = jit_once(model.init, jax.random.key(1, impl="unsafe_rbg"), jnp.zeros((1, 28, 28, 1)))
    clf = tmp_path / "clf.msgpack"
    classifier_features.save_classifier(clf, model, params)
    config.eval.classifier_path = str(clf)
    with tfds.testing.mock_data(num_examples=16, policy=tfds.testing.MockPolicy.USE_CODE):
        main_lib.run(config, str(tmp_path), ["train", "sample", "eval"])
        images, _ = data.load_array("mnist", split="test")
    result = json.loads((tmp_path / "eval.json").read_text())
    assert result["checkpoint_step"] == 2
    run = restore.restore_params(builders.build(config), str(tmp_path))
    key, exp = restore.stream_key(config.seed, "eval"), run.experiment
    vlb = jax.jit(lambda k, x0: likelihood.vlb_bpd(lambda x_t, t: exp.model.apply({"params": run.params}, x_t, t,
                                                                                   train=False),
                                                   exp.schedule, k, x0, mean_type=exp.mean_type,
                                                   var_type=exp.var_type)["total"][0])  # fmt: skip
    x = image_eval.to_model_range(images[:3])
    want = [vlb(jax.random.fold_in(key, i), x[i : i + 1]) for i in range(3)]  # image i alone, its own key
    np.testing.assert_allclose(result["test_bpd"], np.mean(want), rtol=1e-6)
    assert result["bpd_num_examples"] == 3 and result["test_bpd_stderr"] > 0
    samples = np.load(tmp_path / "samples.npy")
    fid = image_eval.classifier_metrics(samples, str(clf), images)["classifier_fid"]
    np.testing.assert_allclose(result["classifier_fid"], fid, rtol=1e-9)
    assert result["num_fid_samples"] == 6 and "sample_accuracy" not in result  # unconditional model
    assert samples.shape == (6, 28, 28, 1) and np.all(np.isfinite(samples))
    npz = np.load(tmp_path / "samples.npz")
    assert npz["samples"].dtype == np.uint8 and "labels" not in npz.files
    np.testing.assert_array_equal(npz["samples"], np.clip(np.floor((samples.astype(np.float64) + 1) * 127.5 + 0.5), 0, 255))
    assert plt.imread(tmp_path / "samples.png").shape[:2] == plots.image_grid(samples).shape[:2]
    rec = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    # The UNet's output conv is zero-initialised, so step 1's loss is mean(eps^2) over 8*784 values:
    # mean 1, std sqrt(2/6272) = 0.018; 0.09 is 5 sigma.
    assert [r["step"] for r in rec] == [1, 2] and abs(rec[0]["loss"] - 1.0) < 0.09
    assert sorted(os.listdir(tmp_path / "checkpoints")) == ["2", "config.json"]
    # --mode=eval alone (samples regenerated from the kept parts): the EMA parameters are restored ONCE for
    # the samples and the bits/dim (one checkpoint for both), and eval.json is the same.
    from diffax.training import evaluate, evaluate_images

    calls = []

    def counted(*args, **kw):
        calls.append(kw.get("purpose", "sample"))
        return restore.restore_params(*args, **kw)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(evaluate, "restore_params", counted)
        mp.setattr(evaluate_images, "restore_params", counted)
        with tfds.testing.mock_data(num_examples=16, policy=tfds.testing.MockPolicy.USE_CODE):
            main_lib.run(config, str(tmp_path), ["eval"])
    assert calls == ["eval"], calls
    again = json.loads((tmp_path / "eval.json").read_text())
    for k in ("test_bpd", "classifier_fid", "checkpoint_step", "num_fid_samples"):
        assert again[k] == result[k], k


# A tiny UNet on 16 random 8x8 images ('npz' data: its one split is also the bits/dim split), T = 10.
_TINY_IMAGE_RUN = ["--config=configs/mnist.py:tiny", "--config.data.name=npz", "--config.model.ch=8",
                   "--config.model.ch_mult=(1,)", "--config.model.num_groups=4", "--config.model.attn_resolutions=()",
                   "--config.diffusion.num_timesteps=10", "--config.diffusion.beta_start=1e-4",
                   "--config.diffusion.beta_end=0.02", "--config.diffusion.max_terminal_alpha_bar=1.0",
                   "--config.training.num_steps=2", "--config.training.batch_size=8", "--config.sampling.num_samples=2",
                   "--config.sampling.num_steps=2", "--config.eval.bpd_num_examples=3"]  # fmt: skip


def _main(workdir, data, *args, num_devices=1):
    """``python -m diffax.main`` of the tiny image run in a fresh process; its CompletedProcess."""
    cmd = [sys.executable, "-m", "diffax.main", f"--workdir={workdir}", *_TINY_IMAGE_RUN,
           f"--config.data.path={data}", *args]  # fmt: skip
    return subprocess.run(cmd, cwd=REPO, env=cpu_env(num_devices), capture_output=True, text=True, timeout=600)


def _eval_json(workdir, data, *args, num_devices=1):
    proc = _main(workdir, data, "--mode=eval", *args, num_devices=num_devices)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads((workdir / "eval.json").read_text())


@pytest.fixture(scope="module")
def tiny_image_run(tmp_path_factory):
    """(workdir, data file, images) of `--mode=train,sample` on 16 random 8x8 images (2 steps, 2 samples)."""
    tmp = tmp_path_factory.mktemp("tiny_image_run")
    data, workdir = tmp / "d.npz", tmp / "wd"
    images = np.random.default_rng(0).integers(0, 256, (16, H, H, 1), dtype=np.uint8)
    np.savez(data, images=images)
    proc = _main(workdir, data, "--mode=train,sample")
    assert proc.returncode == 0, proc.stderr[-3000:]
    return workdir, data, images


@pytest.mark.slow
def test_cli_bits_per_dim_does_not_depend_on_batch_size_or_device_count(tiny_image_run):
    """`python -m diffax.main --mode=eval --config.eval.bpd_num_examples=3` on a trained tiny UNet with
    eval.bpd_batch_size 1, 2, 3 on one device and 3 on 8 forced devices (rounded up to 8: one image per
    device, 5 padding rows): test_bpd is the same, and equal to the mean of `likelihood.vlb_bpd` of each image
    alone with key fold_in(eval key, i) on the checkpoint's EMA parameters (float32: rtol 1e-6; the programs
    differ only in batch shape, so XLA may round differently). Negative control: keys per batch (the removed
    `images.test_bits_per_dim`) give another mean at batch size 2 and at 3, by far more than the tolerance."""
    from diffax.training import builders, restore

    wd, data, images = tiny_image_run
    got = {f"batch {b}": _eval_json(wd, data, f"--config.eval.bpd_batch_size={b}")["test_bpd"] for b in (1, 2, 3)}
    got["8 devices"] = _eval_json(wd, data, "--config.eval.bpd_batch_size=3", num_devices=8)["test_bpd"]
    config = restore.read_run_config(str(wd))
    run = restore.restore_params(builders.build(config), str(wd))
    key, exp = restore.stream_key(config.seed, "eval"), run.experiment

    def model_fn(x_t, t):
        return exp.model.apply({"params": run.params}, x_t, t, train=False)

    vlb = jax.jit(lambda k, x0: likelihood.vlb_bpd(model_fn, exp.schedule, k, x0, mean_type=exp.mean_type,
                                                   var_type=exp.var_type)["total"])  # fmt: skip
    x = image_eval.to_model_range(images[:3])
    want = np.mean([vlb(jax.random.fold_in(key, i), x[i : i + 1])[0] for i in range(3)])
    for name, value in got.items():
        np.testing.assert_allclose(value, want, rtol=1e-6, err_msg=name)
    for b in (2, 3):  # the removed per-batch keys: batch j noised with fold_in(key, j), padded to b rows
        per_batch = np.concatenate([vlb(jax.random.fold_in(key, j), np.concatenate(
            [x[lo : lo + b], np.zeros((max(0, lo + b - 3),) + x.shape[1:], np.float32)]))[: min(b, 3 - lo)]
            for j, lo in enumerate(range(0, 3, b))])  # fmt: skip
        assert abs(np.mean(per_batch) - want) > 100 * 1e-6 * want, b


def _garbage(p):
    p.write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())


def _truncated(p):
    from diffax.models.inception import save_random_fid_weights

    save_random_fid_weights(p.with_suffix(".npz"))
    whole = p.with_suffix(".npz").read_bytes()
    p.with_suffix(".npz").unlink()
    p.write_bytes(whole[: len(whole) // 2])  # a .pth is a zip archive too (torch.save): cut the same way


# torch 2.14's torch.load raises these for garbage and for a cut archive; without torch a .pth is refused by name.
_PTH_REASON = "damaged or unreadable torch state dict ({}" if importlib.util.find_spec("torch") else (
    "reading a .pth needs torch")  # fmt: skip
# (file name, how it is made, what the message says after "eval.inception_weights=PATH: ")
_BAD_WEIGHTS = [
    ("garbage.npz", _garbage, "not an .npz file (not a zip archive: garbage or truncated?)"),
    ("truncated.npz", _truncated, "not an .npz file (not a zip archive: garbage or truncated?)"),
    ("garbage.pth", _garbage, _PTH_REASON.format("UnpicklingError")),
    ("truncated.pth", _truncated, _PTH_REASON.format("OSError")),
    ("missing.npz", None, "no such file ("),
]  # fmt: skip


@pytest.mark.slow
def test_cli_bad_inception_weights_is_one_line_naming_the_flag_and_the_file(tiny_image_run, tmp_path):
    """`--mode=eval --config.eval.inception_weights=PATH` with garbage bytes (.npz, .pth), a truncated file
    (.npz, .pth: the first half of a valid one) and a missing file: exit status 1, no traceback, and the last
    stderr line is ``diffax: error: <Type>: eval.inception_weights=PATH: <what is wrong>``. Before: a
    traceback (BadZipFile, 'Cannot load file containing pickled data') or a line naming neither. The file is
    read before any work: `--mode=sample,eval` draws no sample first."""
    wd, data, _ = tiny_image_run
    for name, make, reason in _BAD_WEIGHTS:
        path = tmp_path / name
        if make is not None:
            make(path)
        proc = _main(wd, data, "--mode=eval", "--config.eval.bpd_num_examples=0", "--config.eval.num_samples=2",
                     f"--config.eval.inception_weights={path}")  # fmt: skip
        last = proc.stderr.strip().splitlines()[-1]
        assert proc.returncode == 1 and "Traceback" not in proc.stderr, (name, proc.stderr[-3000:])
        assert re.fullmatch(rf"diffax: error: \w+: eval\.inception_weights={re.escape(str(path))}: .+", last), last
        assert reason in last, (name, last)
    # Read before any work (issue 20, item 14): `--mode=sample,eval` at another N (so every sample would be new)
    # stops on the missing file before drawing one sample: no sample part, samples.npz unchanged.
    parts = sorted(os.listdir(wd / "samples"))
    before = (wd / "samples.npz").read_bytes()
    proc = _main(wd, data, "--mode=sample,eval", "--config.sampling.num_samples=3", "--config.eval.num_samples=3",
                 f"--config.eval.inception_weights={tmp_path / 'missing.npz'}")  # fmt: skip
    assert proc.returncode == 1 and "eval.inception_weights=" in proc.stderr.strip().splitlines()[-1], proc.stderr
    assert sorted(os.listdir(wd / "samples")) == parts and (wd / "samples.npz").read_bytes() == before
