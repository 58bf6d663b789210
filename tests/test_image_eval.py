"""Tests of diffax.training.image_eval (test-split bits/dim, classifier FID) and of `--mode=eval`
for images through the entry point.

The bits/dim path is checked against `diffax.likelihood.vlb_bpd` called directly (the VLB itself is
tested against analytic values in test_likelihood.py): batching, padding, key handling and label
routing must not change a number. The classifier metrics are checked against `diffax.feature_fid`.
"""

from __future__ import annotations

import json
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from _compile import jit_once
from diffax import feature_fid, likelihood, schedules
from diffax.models import Classifier
from diffax.training import image_eval, plots

H = 8


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


def test_bits_per_dim_equals_direct_vlb_with_padding_and_labels():
    """N = 5 images in batches of 2 (the last one padded): every per-image total equals
    `likelihood.vlb_bpd` on the same padded batch with key fold_in(key, j) (float32: rtol 1e-6);
    bpd is their mean and bpd_stderr = sd / sqrt(N). Labels reach the network (negative control:
    other labels give other totals)."""
    s = schedules.linear(20, 1e-4, 0.02)
    params = {"c": jnp.asarray(0.3)}
    images, labels = _images(5), np.array([0, 1, 2, 0, 1], np.int32)
    key = jax.random.PRNGKey(4)
    out = image_eval.test_bits_per_dim(_linear_eps_model, params, s, images, key, labels=labels, batch_size=2,
                                       progress=False)  # fmt: skip
    x = image_eval.to_model_range(images)
    want = []
    for j, lo in enumerate(range(0, 5, 2)):
        xb = np.zeros((2, H, H, 1), np.float32)
        yb = np.zeros((2,), np.int32)
        m = min(2, 5 - lo)
        xb[:m], yb[:m] = x[lo : lo + m], labels[lo : lo + m]
        fn = lambda x_t, t, yb=yb: _linear_eps_model({"params": params}, x_t, t, y=jnp.asarray(yb))  # noqa: E731
        want.append(np.asarray(likelihood.vlb_bpd(fn, s, jax.random.fold_in(key, j), jnp.asarray(xb))["total"])[:m])
    want = np.concatenate(want)
    np.testing.assert_allclose(out["per_example"], want, rtol=1e-6)
    assert out["num_examples"] == 5
    np.testing.assert_allclose(out["bpd"], np.mean(want), rtol=1e-6)
    np.testing.assert_allclose(out["bpd_stderr"], np.std(want, ddof=1) / math.sqrt(5), rtol=1e-5)
    assert 0 < out["prior_bpd"] < out["bpd"] and 0 < out["decoder_bpd"] < out["bpd"]
    other = image_eval.test_bits_per_dim(_linear_eps_model, params, s, images, key, labels=labels + 3, batch_size=2,
                                         progress=False)  # fmt: skip
    assert np.min(np.abs(np.asarray(other["per_example"]) - want)) > 1e-4


def test_sharded_bits_per_dim_equals_vlb_of_each_image_alone():
    """`sharded_bits_per_dim` (the eval path: rows over the mesh, image i's noise from fold_in(key, i)):
    every per-image total equals `likelihood.vlb_bpd` on that image alone with key fold_in(key, i) (float32:
    rtol 1e-6), for any batch size (2: the last batch padded; 5: one batch); labels reach the network
    (negative control: other labels give other totals). 8 devices: tests/test_inception_metrics.py."""
    from diffax.evaluation.sharded import sharded_bits_per_dim
    from diffax.training import sharding

    s = schedules.linear(20, 1e-4, 0.02)
    params = {"c": jnp.asarray(0.3)}
    x, labels = image_eval.to_model_range(_images(5)), np.array([0, 1, 2, 0, 1], np.int32)
    key, mesh = jax.random.PRNGKey(4), sharding.make_mesh(jax.devices()[:1])

    @jax.jit
    def alone(k, xi, yi):
        fn = lambda x_t, t: _linear_eps_model({"params": params}, x_t, t, y=yi)  # noqa: E731
        return likelihood.vlb_bpd(fn, s, k, xi)["total"][0]

    want = np.array([alone(jax.random.fold_in(key, i), x[i : i + 1], labels[i : i + 1]) for i in range(5)])
    for batch_size in (2, 5):
        out = sharded_bits_per_dim(_linear_eps_model, params, s, x, key, mesh, labels=labels, batch_size=batch_size)
        np.testing.assert_allclose(out["per_example"], want, rtol=1e-6)
        assert out["num_examples"] == 5
        np.testing.assert_allclose(out["bpd"], np.mean(want), rtol=1e-6)
        np.testing.assert_allclose(out["bpd_stderr"], np.std(want, ddof=1) / math.sqrt(5), rtol=1e-5)
    other = sharded_bits_per_dim(_linear_eps_model, params, s, x, key, mesh, labels=labels + 3, batch_size=2)
    assert np.min(np.abs(np.asarray(other["per_example"]) - want)) > 1e-4
    with pytest.raises(ValueError, match="labels has 2 entries for 5 images"):
        sharded_bits_per_dim(_linear_eps_model, params, s, x, key, mesh, labels=labels[:2])


def test_bits_per_dim_rejects_bad_input():
    s = schedules.linear(5, 1e-4, 0.02)
    with pytest.raises(ValueError, match="labels has 2 entries for 3 images"):
        image_eval.test_bits_per_dim(_linear_eps_model, {"c": 0.0}, s, _images(3), jax.random.PRNGKey(0),
                                     labels=np.zeros(2, np.int32), progress=False)  # fmt: skip
    with pytest.raises(ValueError, match="batch_size"):
        image_eval.test_bits_per_dim(_linear_eps_model, {"c": 0.0}, s, _images(3), jax.random.PRNGKey(0),
                                     batch_size=0, progress=False)  # fmt: skip


@pytest.fixture(scope="module")
def classifier_file(tmp_path_factory):
    model = Classifier(num_classes=3, ch=4, ch_mult=(1, 2), num_res_blocks=1)
    # An rbg key: the init compiles ~4x faster than with threefry (any weights serve these checks).
    params = jit_once(model.init, jax.random.key(0, impl="unsafe_rbg"), jnp.zeros((1, H, H, 1)))
    path = tmp_path_factory.mktemp("clf") / "classifier.msgpack"
    feature_fid.save_classifier(path, model, params)
    return str(path), model, params


def test_classifier_metrics_match_feature_fid(classifier_file):
    """FID of the reference images themselves is 0 (up to the sqrtm's rounding, < 1e-6); FID and
    accuracy equal `feature_fid.feature_fid` / `classifier_accuracy` called directly (rtol 1e-9)."""
    path, model, params = classifier_file
    ref = _images(200, seed=1)
    same = image_eval.classifier_metrics(image_eval.to_model_range(ref), path, ref)
    assert abs(same["classifier_fid"]) < 1e-6
    samples = np.random.default_rng(2).normal(size=(100, H, H, 1)).astype(np.float32) * 0.5
    labels = np.arange(100) % 3
    out = image_eval.classifier_metrics(samples, path, ref, sample_labels=labels)
    stats = feature_fid.feature_stats(image_eval.to_model_range(ref), model=model, params=params)
    clipped = np.clip(samples, -1, 1)  # classifier_metrics clips to the data range first
    np.testing.assert_allclose(out["classifier_fid"], feature_fid.feature_fid(clipped, stats, model=model,
                                                                              params=params), rtol=1e-9)  # fmt: skip
    assert out["classifier_fid"] > 100 * 1e-6  # negative control: other images are far from 0
    assert out["sample_accuracy"] == feature_fid.classifier_accuracy(clipped, labels, model=model, params=params)
    assert out["num_fid_samples"] == 100 and out["num_reference"] == 200
    # A reference built once and reused gives the same numbers as the one-shot call.
    reference = image_eval.classifier_reference(path, ref)
    assert image_eval.reference_metrics(samples, reference, sample_labels=labels) == out


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
    feature_fid.save_classifier(clf, model, params)
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
