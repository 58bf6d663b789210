"""Tests of FID / IS / KID with the FID Inception-v3 (`diffax.evaluation.inception_metrics`) and of the
evaluation entry `diffax.training.evaluate_images.inception_eval` (reference cache, user reference, eval.json
entries), with mock images and random Inception weights.

Cost: the network runs at 75x75 (``InceptionV3(input_size=75)``; its smallest input) instead of 299x299. It is
the same computation with a smaller resize target: the same uint8 -> [-1, 1] mapping, the same bilinear
resize code, every one of the 94 layers and the same pool3 / fc heads; only the spatial size of the maps
differs (pool3 averages a 1x1 instead of an 8x8 map), so every code path FID takes is exercised at 1/16 of
the FLOPs. One compiled program (batch 8) serves every test in this process; one subprocess with 8 forced CPU
devices (started by the first test, read by the last) recomputes the same numbers sharded 8 ways.

The metric formulas themselves (Frechet distance, unbiased MMD^2 vs the explicit double sum, IS analytic
values) are tested in test_metrics.py; here: that the pipeline feeds them the right numbers.
"""

from __future__ import annotations

import os
import subprocess
import sys

import jax
import numpy as np
import pytest
from _processes import cpu_env
from test_image_eval import _BAD_WEIGHTS, _linear_eps_model  # eps_hat = c x_t + 0.01 y: one stand-in for both files

from diffax.evaluation import inception_metrics as im
from diffax.evaluation import metrics
from diffax.models.inception import InceptionV3, load_fid_weights, save_random_fid_weights

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODEL = InceptionV3(input_size=75)
BATCH = 8  # 20 reference rows -> batches of 8, 8 and 4 (+ 4 padding rows)


def _mock_images(n: int, seed: int) -> np.ndarray:
    """uint8 (n, 32, 32, 3): random 4x4 colour blocks upsampled x8 plus pixel noise (CIFAR-like shapes)."""
    rng = np.random.default_rng(seed)
    blocks = np.kron(rng.integers(0, 256, (n, 4, 4, 3)).astype(np.float64), np.ones((1, 8, 8, 1)))
    return np.clip(blocks + rng.normal(0, 20, (n, 32, 32, 3)), 0, 255).astype(np.uint8)


REFERENCE, SAMPLES = _mock_images(20, 0), _mock_images(16, 1)


def _bpd_inputs():
    from diffax import schedules

    images = np.random.default_rng(7).integers(0, 256, size=(5, 8, 8, 1)).astype(np.float32) / 127.5 - 1.0
    return schedules.linear(20, 1e-4, 0.02), images, np.array([0, 1, 2, 0, 1], np.int32), jax.random.PRNGKey(4)


def _worker(out: str, weights: str) -> None:
    """Run in a subprocess with 8 forced devices: the same computations as the tests, sharded 8 ways."""
    from diffax.device_mesh import make_mesh
    from diffax.evaluation.bits_per_dim import sharded_bits_per_dim

    mesh = make_mesh()
    assert mesh.devices.size == 8, mesh
    variables = load_fid_weights(weights)
    ref = im.reference_stats(REFERENCE, MODEL, variables, mesh, batch_size=BATCH)
    res = im.sample_metrics(SAMPLES, ref, MODEL, variables, mesh, batch_size=BATCH)
    s, x, y, key = _bpd_inputs()
    bpd = sharded_bits_per_dim(_linear_eps_model, {"c": 0.3}, s, x, key, mesh, labels=y, batch_size=2)
    np.savez(out, pool3=ref.features, mu=ref.mu, sigma=ref.sigma, fid=res["fid"],
             inception_score=res["inception_score"], kid=res["kid"], bpd=np.asarray(bpd["per_example"]))  # fmt: skip


@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> str:
    return save_random_fid_weights(tmp_path_factory.mktemp("inception") / "random_inception.npz", seed=0)


@pytest.fixture(scope="module")
def eight_devices(weights, tmp_path_factory):
    """Starts the 8-device worker now; ``eight_devices()`` waits for it (120 s) and returns its outputs."""
    out = str(tmp_path_factory.mktemp("worker") / "out.npz")
    env = dict(cpu_env(8), OPENBLAS_NUM_THREADS="1")  # small host matmuls; BLAS threads only contend on a busy CPU
    job = subprocess.Popen([sys.executable, os.path.abspath(__file__), out, weights], env=env, cwd=REPO,
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT)  # fmt: skip

    def result():
        try:
            log, _ = job.communicate(timeout=120)
        except subprocess.TimeoutExpired:
            job.kill()
            pytest.fail("the 8-device worker did not finish in 120 s")
        assert job.returncode == 0, log.decode()[-3000:]
        return dict(np.load(out))

    yield result
    if job.poll() is None:
        job.kill()


@pytest.fixture(scope="module")
def one_device(weights, eight_devices):
    """Inception variables, a 1-device mesh and the reference (REFERENCE's statistics and features)."""
    from diffax.device_mesh import make_mesh

    variables = load_fid_weights(weights)
    mesh = make_mesh(jax.devices()[:1])
    return variables, mesh, im.reference_stats(REFERENCE, MODEL, variables, mesh, batch_size=BATCH)


def test_sharded_statistics_equal_metrics_on_the_same_features(one_device):
    """mu, Sigma merged from the devices' per-batch moments (float32, padding rows weighted 0) equal
    `metrics.stats_update` / `stats_finalize` on the gathered features in float64: |d mu| <= 1e-6 max|mu|,
    |d Sigma| <= 1e-5 max|Sigma| (float32 rounding of sums of <= 8 rows). A row's features do not depend on
    its batch (REFERENCE[4:12] puts rows 4..11 in another batch and position: equal to 1e-6 relative)."""
    variables, mesh, ref = one_device
    mu, sigma = metrics.stats_finalize(metrics.stats_update(metrics.stats_init(2048), ref.features))
    assert ref.num_images == 20 and ref.features.shape == (20, 2048)
    np.testing.assert_allclose(ref.mu, mu, rtol=0, atol=1e-6 * np.abs(mu).max())
    np.testing.assert_allclose(ref.sigma, sigma, rtol=0, atol=1e-5 * np.abs(sigma).max())
    # Negative control: 4 more rows (as many as the last batch's padding) change Sigma far beyond the tolerance.
    wrong = metrics.stats_finalize(metrics.stats_update(metrics.stats_init(2048), np.concatenate(
        [ref.features, ref.features[:4]])))  # fmt: skip
    assert np.abs(wrong[1] - sigma).max() > 100 * 1e-5 * np.abs(sigma).max()
    shifted = im.inception_outputs(REFERENCE[4:12], MODEL, variables, mesh, batch_size=BATCH)
    np.testing.assert_allclose(shifted.pool3, ref.features[4:12], rtol=1e-6, atol=1e-6 * np.abs(ref.features).max())
    assert shifted.logits.shape == (8, 1008)


def test_fid_kid_is_of_a_set_with_itself(one_device):
    """REFERENCE scored against itself in reverse order (other batches): FID ~ 0 (< 1e-6 tr Sigma: float32
    features); KID with subsets of all 20 rows equals its closed form 2 (S / N - D) / (N (N - 1)) (S: the sum
    of the kernel matrix, D: its trace; both subsets are the whole set; rtol 1e-6), which is ~0 (|KID| <=
    2 max k(x, x) / N); IS equals `metrics.inception_score` of pool3 W (the fc layer WITHOUT its bias, as the
    original IS code) over 10 splits (rtol 1e-6: float32 logits on the device vs float64 here), and differs
    from the with-bias value by far more (negative control)."""
    variables, mesh, ref = one_device
    res = im.sample_metrics(REFERENCE[::-1].copy(), ref, MODEL, variables, mesh, batch_size=BATCH)
    tr = float(np.trace(ref.sigma))
    assert res["num_samples"] == 20 and abs(res["fid"]) < 1e-6 * tr
    f = ref.features.astype(np.float64)
    k = (f @ f.T / 2048 + 1.0) ** 3
    n = len(f)
    closed = 2 * (k.sum() / n - np.trace(k)) / (n * (n - 1))
    np.testing.assert_allclose(res["kid"], closed, rtol=1e-6)
    assert abs(res["kid"]) <= 2 * np.diag(k).max() / n and res["kid_std"] < 1e-9 * abs(closed)
    w = np.asarray(variables["params"]["fc"]["kernel"], np.float64)
    b = np.asarray(variables["params"]["fc"]["bias"], np.float64)
    logits = f[::-1] @ w
    want = metrics.inception_score(logits, from_logits=True, num_splits=10)
    np.testing.assert_allclose([res["inception_score"], res["inception_score_std"]], want, rtol=1e-6)
    with_bias = metrics.inception_score(logits + b, from_logits=True, num_splits=10)
    assert abs(with_bias[1] - want[1]) > 100 * 1e-6 * want[1]


def test_inception_score_of_uniform_logits_is_one(one_device):
    """With a zero fc kernel every image's p(y|x) is uniform over the 1008 classes: IS = 1 exactly
    (|IS - 1| < 1e-12) and its std over the 8 splits (of 1 image) is 0, whatever the bias."""
    variables, mesh, ref = one_device
    zero_fc = {**variables, "params": {**variables["params"], "fc": {
        "kernel": np.zeros((2048, 1008), np.float32), "bias": np.asarray(variables["params"]["fc"]["bias"])}}}
    res = im.sample_metrics(SAMPLES[:BATCH], ref, MODEL, zero_fc, mesh, batch_size=BATCH)
    assert abs(res["inception_score"] - 1.0) < 1e-12 and res["inception_score_std"] < 1e-12


@pytest.mark.parametrize("n", [12, 60])
def test_frechet_distance_from_features_equals_metrics(n):
    """The N x N form of FID (`frechet_distance_from_features`) equals `metrics.frechet_distance` of the
    features' mean and 1/(N-1) covariance, for rank-deficient (N = 12 < D = 40) and full-rank (N = 60)
    sample covariances: rtol 1e-7 (the D x D path takes square roots of the rounding noise, ~1e-16, in the
    null space of a singular covariance: sqrt(1e-16) = 1e-8 per null eigenvalue); a shifted sample mean
    changes it by exactly ||shift||^2 + 2 shift.(mean - mu_ref) (to 1e-8 of the FID: the centring leaves one
    null eigenvalue, whose rounding noise ~1e-16 enters as its square root)."""
    rng = np.random.default_rng(n)
    x = rng.normal(size=(n, 40)) @ rng.normal(size=(40, 40)) / 6
    r = rng.normal(0.3, 1.0, size=(100, 40))
    mu_r, sigma_r = r.mean(0), np.cov(r, rowvar=False)
    want = metrics.frechet_distance(x.mean(0), np.cov(x, rowvar=False), mu_r, sigma_r)
    got = im.frechet_distance_from_features(x, mu_r, sigma_r)
    np.testing.assert_allclose(got, want, rtol=1e-7)
    shift = np.full(40, 0.1)
    np.testing.assert_allclose(im.frechet_distance_from_features(x + shift, mu_r, sigma_r) - got,
                               0.1 * (0.1 * 40 + 2 * np.sum(x.mean(0) - mu_r)), rtol=0, atol=1e-8 * got)  # fmt: skip


def test_inputs_are_checked():
    mesh = None  # the checks run before any device work
    with pytest.raises(ValueError, match="uint8"):
        im.inception_outputs(np.zeros((2, 32, 32, 3), np.float32), MODEL, {}, mesh)
    with pytest.raises(ValueError, match=r"\(N, H, W, 3\)"):
        im.inception_outputs(np.zeros((2, 32, 32, 2), np.uint8), MODEL, {}, mesh)


def test_reference_files_pytorch_fid_format(tmp_path, one_device):
    """save_reference / load_reference round-trip exactly; a pytorch-fid file (mu, sigma only) loads with
    features None; wrong keys or shapes are refused by name."""
    _, _, ref = one_device
    im.save_reference(tmp_path / "ours.npz", ref, dataset="mock")
    back = im.load_reference(tmp_path / "ours.npz")
    for a, b in zip(back, ref):
        np.testing.assert_array_equal(a, b)
    np.savez(tmp_path / "pytorch_fid.npz", mu=ref.mu.astype(np.float32), sigma=ref.sigma.astype(np.float32))
    theirs = im.load_reference(tmp_path / "pytorch_fid.npz")
    assert theirs.features is None and theirs.num_images is None and theirs.sigma.dtype == np.float64
    np.savez(tmp_path / "bad.npz", m=ref.mu)
    with pytest.raises(ValueError, match="'mu' and 'sigma'"):
        im.load_reference(tmp_path / "bad.npz")
    np.savez(tmp_path / "small.npz", mu=ref.mu[:10], sigma=ref.sigma[:10, :10])
    with pytest.raises(ValueError, match=r"mu must be \(2048,\)"):
        im.load_reference(tmp_path / "small.npz")


@pytest.fixture(scope="module")
def evaluated(weights, one_device, tmp_path_factory):
    """`inception_eval` of SAMPLES (as floats, quantised back to uint8 inside) on a mock 'npz' data set whose
    training split is REFERENCE, with the 1-device mesh."""
    from diffax.training import builders, evaluate_images, presets

    tmp = tmp_path_factory.mktemp("eval")
    np.savez(tmp / "train.npz", images=REFERENCE)
    config = presets.load_config(os.path.join(REPO, "configs", "cifar10.py"))
    config.data.name, config.data.path = "npz", str(tmp / "train.npz")
    config.sampling.num_samples = 16
    config.eval.inception_weights, config.eval.num_samples, config.eval.fid_batch_size = weights, 16, BATCH
    exp = builders.build(config)
    samples = SAMPLES.astype(np.float64) / 127.5 - 1.0
    workdir = str(tmp / "workdir")
    os.makedirs(workdir)
    result = evaluate_images.inception_eval(exp, workdir, samples, model=MODEL, mesh=one_device[1])
    return exp, workdir, samples, result


def test_inception_eval_records_and_caches_the_reference(evaluated, one_device, weights):
    """eval.json's entries: FID / IS / KID equal `sample_metrics` on the uint8 samples against REFERENCE's
    statistics (rtol 1e-9: the same computation), N, the weights' SHA-256, the reference file. The reference
    is cached in workdir/fid_reference/npz-<key>.npz and read back (source 'cache') on the next call; a user
    file (eval.fid_reference) is used as given."""
    from diffax.training import evaluate_images

    exp, workdir, samples, result = evaluated
    variables, mesh, ref = one_device
    want = im.sample_metrics(SAMPLES, ref, MODEL, variables, mesh, batch_size=BATCH, kid_seed=exp.seed)
    for k in ("fid", "inception_score", "inception_score_std", "kid", "kid_std"):
        np.testing.assert_allclose(result[k], want[k], rtol=1e-9, err_msg=k)
    assert result["fid"] > 1e3 * 1e-6 * np.trace(ref.sigma)  # other images: far from the self-FID bound
    assert result["fid_num_samples"] == 16 and result["fid_num_reference"] == 20
    sha = result["inception_weights_sha256"]
    assert sha == im.file_sha256(weights) and len(sha) == 64
    assert result["fid_reference_source"] == "computed"
    path = result["fid_reference"]
    assert os.path.dirname(path) == os.path.join(workdir, evaluate_images.FID_REFERENCE_DIR)
    assert os.path.basename(path).startswith("npz-") and os.path.isfile(path)
    cached, info = evaluate_images.fid_reference(exp, workdir, MODEL, variables, result["inception_weights_sha256"],
                                                 mesh)  # fmt: skip
    assert info["fid_reference_source"] == "cache" and info["fid_reference"] == path
    np.testing.assert_array_equal(cached.sigma, ref.sigma)
    # Other weights (another hash) or other images get another file: nothing is reused across them.
    assert evaluate_images.fid_reference_path(workdir, "npz", REFERENCE, sha) == path
    assert evaluate_images.fid_reference_path(workdir, "npz", REFERENCE, "0" * 64) != path
    assert evaluate_images.fid_reference_path(workdir, "npz", REFERENCE[:19], sha) != path
    changed = REFERENCE.copy()
    changed[3, 4, 5, 1] ^= 1
    assert evaluate_images.fid_reference_path(workdir, "npz", changed, sha) != path
    user = os.path.join(workdir, "user_stats.npz")
    np.savez(user, mu=ref.mu, sigma=ref.sigma)
    import dataclasses

    exp_user = dataclasses.replace(exp, eval=dataclasses.replace(exp.eval, fid_reference=user))
    given, info = evaluate_images.fid_reference(exp_user, workdir, MODEL, variables, "unused", mesh)
    assert info == {"fid_reference": user, "fid_reference_source": "file", "fid_num_reference": None}
    assert given.features is None
    np.testing.assert_array_equal(given.mu, ref.mu)


def _fixture_module():
    """experiments/make_inception_fixture.py (NumPy only at import; torch only in its main)."""
    import importlib.util

    path = os.path.join(REPO, "experiments", "make_inception_fixture.py")
    spec = importlib.util.spec_from_file_location("make_inception_fixture", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _assert_close_to_pytorch_fid(out: im.InceptionOutputs, fixture) -> None:
    """pool3 and bias-free logits within rtol 1e-5 + atol 1e-5 max|reference|: float32 sums through 94 layers
    in torch's and XLA's CPU convolutions (other algorithms, other rounding); measured 5.1e-7 max|pool3| and
    7.8e-7 max|logits| (pytorch-fid 0.3.0, torch 2.14.1, 2-core CPU)."""
    for k in ("pool3", "logits"):
        want = fixture[k]
        np.testing.assert_allclose(getattr(out, k), want, rtol=1e-5, atol=1e-5 * np.abs(want).max(), err_msg=k)


@pytest.mark.slow
def test_inception_features_equal_pytorch_fid_with_fixed_random_weights(tmp_path):
    """The FID Inception-v3 checked numerically against pytorch-fid's own network: tests/fixtures/
    inception_random_features.npz holds what ``pytorch_fid.inception.InceptionV3([3])`` (pytorch-fid 0.3.0,
    torch 2.14.1; experiments/make_inception_fixture.py) computes for 4 uint8 32x32 images with fixed random
    weights that are not stored but regenerated here from the tensor names (`fixture_state_dict`). Here the
    same weights go through diffax's weights path (an .npz of the state dict, `load_inception`, as
    eval.inception_weights) and the images through `inception_outputs` (uint8 -> [-1, 1], bilinear resize to
    299x299, pool3 and the fc layer without its bias, as for FID and IS): equal within
    `_assert_close_to_pytorch_fid`'s tolerance. diffax's state-dict layout (every name and shape) equals
    pytorch-fid's exactly. Negative control: the first BatchNorm's running variance x 1.001 (one tensor,
    0.05 % on one layer's output) moves the features outside the tolerance."""
    import json

    from diffax.device_mesh import make_mesh
    from diffax.models.inception import fid_state_dict_shapes

    mk = _fixture_module()
    fixture = dict(np.load(os.path.join(REPO, "tests", "fixtures", "inception_random_features.npz")))
    shapes = fid_state_dict_shapes()
    theirs = json.loads(str(fixture["state_dict_shapes"]))
    assert {k: list(v) for k, v in shapes.items()} == theirs
    np.testing.assert_array_equal(fixture["images"], mk.fixture_images())
    state = mk.fixture_state_dict(shapes, seed=int(fixture["seed"]))
    np.savez(tmp_path / "weights.npz", **state)
    model, variables = im.load_inception(str(tmp_path / "weights.npz"))
    mesh = make_mesh(jax.devices()[:1])
    out = im.inception_outputs(fixture["images"], model, variables, mesh, batch_size=4)
    _assert_close_to_pytorch_fid(out, fixture)
    state["Conv2d_1a_3x3.bn.running_var"] = state["Conv2d_1a_3x3.bn.running_var"] * np.float32(1.001)
    np.savez(tmp_path / "perturbed.npz", **state)
    _, perturbed = im.load_inception(str(tmp_path / "perturbed.npz"))
    with pytest.raises(AssertionError, match="pool3"):
        _assert_close_to_pytorch_fid(im.inception_outputs(fixture["images"], model, perturbed, mesh, batch_size=4),
                                     fixture)  # fmt: skip


@pytest.mark.parametrize("name,make,reason", _BAD_WEIGHTS + [
    ("other_keys.npz", lambda p: np.savez(p, **{"conv.bias": np.zeros(3)}), "unexpected key in FID Inception weights"),
    ("partial.npz", lambda p: np.savez(p, **{"fc.bias": np.zeros(1008, np.float32)}),
     "the FID weights do not match InceptionV3: missing ["),
])  # fmt: skip
def test_load_inception_refuses_a_bad_file_naming_the_flag_and_the_file(tmp_path, name, make, reason):
    """eval.inception_weights that cannot serve (garbage bytes, a truncated file, a missing file, an .npz of
    other tensors): one ValueError / FileNotFoundError line ``eval.inception_weights=PATH: <what is wrong>``
    (through `python -m diffax.main`: test_image_eval.py's CLI test of the same cases)."""
    path = tmp_path / name
    if make is not None:
        make(path)
    with pytest.raises((ValueError, FileNotFoundError)) as info:
        im.load_inception(str(path))
    message = str(info.value)
    assert message.startswith(f"eval.inception_weights={path}: {reason}") and "\n" not in message, message


def test_inception_eval_needs_eval_num_samples_samples(evaluated):
    import dataclasses

    from diffax.training import evaluate_images

    exp, workdir, samples, _ = evaluated
    exp = dataclasses.replace(exp, eval=dataclasses.replace(exp.eval, num_samples=50_000))
    with pytest.raises(ValueError, match=r"eval.num_samples=50000 .* only 16 were drawn"):
        evaluate_images.inception_eval(exp, workdir, samples, model=MODEL)


def test_eight_devices_equal_one_device(eight_devices, one_device, evaluated):
    """The 8-device worker (batch 8 = one row per device; 1 device: all 8 rows on one) against this
    process: pool3 features and mu, Sigma agree to float32 rounding (rtol 1e-5 of the largest entry; the
    per-device batch differs, so XLA's CPU convolutions round differently: not bitwise), FID / IS / KID to
    rtol 1e-4, and the sharded bits/dim per image to 1e-6 relative (its noise depends only on the image
    index; equal to `likelihood.vlb_bpd` on each image alone, tested in test_image_eval.py)."""
    from diffax.evaluation.bits_per_dim import sharded_bits_per_dim

    got = eight_devices()
    _, mesh, ref = one_device
    result = evaluated[3]
    np.testing.assert_allclose(got["pool3"], ref.features, rtol=0, atol=1e-5 * np.abs(ref.features).max())
    np.testing.assert_allclose(got["mu"], ref.mu, rtol=0, atol=1e-5 * np.abs(ref.mu).max())
    np.testing.assert_allclose(got["sigma"], ref.sigma, rtol=0, atol=1e-5 * np.abs(ref.sigma).max())
    for k in ("fid", "inception_score", "kid"):
        np.testing.assert_allclose(got[k], result[k], rtol=1e-4, err_msg=k)
    s, x, y, key = _bpd_inputs()
    one = sharded_bits_per_dim(_linear_eps_model, {"c": 0.3}, s, x, key, mesh, labels=y, batch_size=3)
    np.testing.assert_allclose(got["bpd"], one["per_example"], rtol=1e-6)


if __name__ == "__main__":
    _worker(*sys.argv[1:3])
