"""Tests of diffax.evaluation.classifier_features: classifier-feature FID / KID / accuracy, and classifier save/load.

No data set and no trained model: a randomly initialised tiny `Classifier` (8x8x1 images,
ch=4, ch_mult=(1, 2) -> 8-dim features) on seeded Gaussian arrays. Every network call goes through
the one jitted `apply_features`, so the whole file compiles a handful of small programs.
"""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from _compile import jit_once
from diffax.evaluation import classifier_features, metrics
from diffax.models import Classifier

N, H = 96, 8
BATCH = 32


@pytest.fixture(scope="module")
def tiny():
    model = Classifier(num_classes=3, ch=4, ch_mult=(1, 2), num_res_blocks=1)
    # An rbg key: the init compiles ~4x faster than with threefry (any weights serve these checks).
    params = jit_once(model.init, jax.random.key(0, impl="unsafe_rbg"), jnp.zeros((1, H, H, 1)))
    return model, params


def _images(seed, n=N, shift=0.0):
    return (np.random.default_rng(seed).normal(size=(n, H, H, 1)) * 0.5 + shift).astype(np.float32)


def test_batched_stats_equal_unbatched(tiny):
    model, params = tiny
    x = _images(1, n=N + 5)  # N + 5 = 101: batches 32, 32, 32, 5 (the last one zero-padded)
    _, feats = model.apply(params, jnp.asarray(x), return_features=True)
    feats = np.asarray(feats, np.float64)
    mu_ref, sigma_ref = feats.mean(0), np.cov(feats, rowvar=False)
    for bs in (BATCH, 7):
        mu, sigma = classifier_features.feature_stats(x, model=model, params=params, batch_size=bs)
        # float32 features: a different batch size may change XLA's conv schedule, so allow
        # float32 rounding (rtol 1e-5) relative to the scale of the statistics.
        scale_mu, scale_s = np.abs(mu_ref).max(), np.abs(sigma_ref).max()
        np.testing.assert_allclose(mu, mu_ref, rtol=0, atol=1e-5 * scale_mu)
        np.testing.assert_allclose(sigma, sigma_ref, rtol=0, atol=1e-5 * scale_s)
    # classifier_outputs trims the padded rows: exactly N + 5 logits and features
    logits, feats_b = classifier_features.classifier_outputs(x, model=model, params=params, batch_size=BATCH)
    assert logits.shape == (N + 5, 3) and feats_b.shape == feats.shape
    np.testing.assert_allclose(feats_b, feats, rtol=1e-5, atol=1e-6)


def test_one_compile_for_any_number_of_samples(tiny):
    model, params = tiny
    classifier_features.classifier_outputs(_images(2, n=BATCH), model=model, params=params, batch_size=BATCH)
    before = classifier_features.apply_features._cache_size()
    for n in (1, 17, 2 * BATCH + 3):  # ragged last batches are padded to BATCH: no new compilation
        classifier_features.classifier_outputs(_images(3, n=n), model=model, params=params, batch_size=BATCH)
    assert classifier_features.apply_features._cache_size() == before


def test_fid_of_set_against_own_stats_is_zero(tiny):
    model, params = tiny
    x = _images(4)
    ref = classifier_features.feature_stats(x, model=model, params=params, batch_size=BATCH)
    fid = classifier_features.feature_fid(x, ref, model=model, params=params, batch_size=BATCH)
    # Identical Gaussians: d^2 = 0 exactly; float64 eigh of an 8x8 covariance (full rank at N = 96)
    # leaves an error ~1e-12 tr(S); 1e-8 tr(S) is a generous bound.
    assert 0.0 <= fid <= 1e-8 * np.trace(ref[1])


def test_fid_is_symmetric(tiny):
    model, params = tiny
    a, b = _images(5), _images(6, shift=0.3)
    sa = classifier_features.feature_stats(a, model=model, params=params, batch_size=BATCH)
    sb = classifier_features.feature_stats(b, model=model, params=params, batch_size=BATCH)
    fab = classifier_features.feature_fid(a, sb, model=model, params=params, batch_size=BATCH)
    fba = classifier_features.feature_fid(b, sa, model=model, params=params, batch_size=BATCH)
    assert fab > 0.0
    # d(P, Q) = d(Q, P) analytically; the two float64 evaluations differ only by rounding.
    np.testing.assert_allclose(fab, fba, rtol=1e-7)


def test_fid_of_pure_mean_shift_is_squared_norm(tiny):
    """Reference stats (mu + d, S) against samples with stats (mu, S): FID = ||d||^2 exactly (eq. 6)."""
    model, params = tiny
    x = _images(7)
    mu, sigma = classifier_features.feature_stats(x, model=model, params=params, batch_size=BATCH)
    d = np.random.default_rng(8).normal(size=mu.shape) * np.sqrt(np.trace(sigma) / mu.size)
    fid = classifier_features.feature_fid(x, (mu + d, sigma), model=model, params=params, batch_size=BATCH)
    np.testing.assert_allclose(fid, d @ d, rtol=1e-7, atol=1e-8 * np.trace(sigma))


def test_fid_increases_with_input_shift(tiny):
    model, params = tiny
    x = _images(9)
    ref = classifier_features.feature_stats(_images(10), model=model, params=params, batch_size=BATCH)
    shifts = (0.0, 0.25, 0.5, 1.0, 2.0)
    fids = [classifier_features.feature_fid(x + np.float32(s), ref, model=model, params=params, batch_size=BATCH)
            for s in shifts]
    # Strictly increasing in the shift of the samples (a fixed seeded network: deterministic);
    # the unshifted independent draw (finite-sample FID only) is the smallest.
    assert all(f1 < f2 for f1, f2 in zip(fids, fids[1:])), fids
    # negative control: the largest shift is far beyond the finite-sample level of two draws
    assert fids[-1] > 10 * fids[0], fids


def test_kid_matches_metrics_on_features(tiny):
    model, params = tiny
    x, r = _images(11, shift=0.5), _images(12)
    _, fr = classifier_features.classifier_outputs(r, model=model, params=params, batch_size=BATCH)
    _, fx = model.apply(params, jnp.asarray(x), return_features=True)
    got = classifier_features.feature_kid(x, fr, model=model, params=params, batch_size=BATCH, num_subsets=5,
                                  subset_size=50, seed=3)
    want = metrics.kernel_inception_distance(np.asarray(fx), fr, num_subsets=5, subset_size=50, seed=3)
    # same subsets (same seed): equal up to float32 rounding of the features
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6 * abs(want[0]) + 1e-9)
    assert got[0] > 0.0


def test_classifier_accuracy(tiny):
    model, params = tiny
    x = _images(13)
    logits = np.asarray(model.apply(params, jnp.asarray(x)))
    pred = logits.argmax(1)
    assert classifier_features.classifier_accuracy(x, pred, model=model, params=params, batch_size=BATCH) == 1.0
    wrong = (pred + 1) % 3  # every label differs from the prediction: accuracy exactly 0
    assert classifier_features.classifier_accuracy(x, wrong, model=model, params=params, batch_size=BATCH) == 0.0
    labels = np.random.default_rng(14).integers(0, 3, size=N)
    acc = classifier_features.classifier_accuracy(x, labels, model=model, params=params, batch_size=BATCH)
    assert acc == np.mean(pred == labels)


def test_save_load_roundtrip_bitwise(tiny, tmp_path):
    model, params = tiny
    path = tmp_path / "sub" / "clf.msgpack"
    classifier_features.save_classifier(path, model, params)
    model2, params2 = classifier_features.load_classifier(path)
    fields = [f.name for f in dataclasses.fields(Classifier) if f.name not in ("parent", "name")]
    assert {f: getattr(model2, f) for f in fields} == {f: getattr(model, f) for f in fields}
    assert jax.tree.structure(params2) == jax.tree.structure(params)
    for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(params2)):
        a = np.asarray(a)
        assert a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()
    x = jnp.asarray(_images(15, n=4))
    np.testing.assert_array_equal(np.asarray(model.apply(params, x)), np.asarray(model2.apply(params2, x)))


def test_stats_file_roundtrip(tmp_path):
    mu, sigma = np.arange(3.0), np.eye(3) * 2.0
    classifier_features.save_feature_stats(tmp_path / "s.npz", mu, sigma, n=10)
    mu2, sigma2 = classifier_features.load_feature_stats(tmp_path / "s.npz")
    np.testing.assert_array_equal(mu2, mu)
    np.testing.assert_array_equal(sigma2, sigma)


def test_bad_inputs_raise(tiny, tmp_path):
    model, params = tiny
    x = _images(16, n=4)
    with pytest.raises(ValueError, match="batch_size"):
        classifier_features.feature_stats(x, model=model, params=params, batch_size=0)
    with pytest.raises(ValueError, match="shape"):
        classifier_features.feature_stats(x[0], model=model, params=params)
    with pytest.raises(ValueError, match="floating"):
        classifier_features.feature_stats(x.astype(np.uint8), model=model, params=params)
    with pytest.raises(ValueError, match="labels"):
        classifier_features.classifier_accuracy(x, np.zeros(3, np.int32), model=model, params=params)
    with pytest.raises(ValueError, match="feature dim"):
        classifier_features.feature_fid(x, (np.zeros(3), np.eye(3)), model=model, params=params)
    with pytest.raises(ValueError, match="time_conditional"):
        classifier_features.feature_stats(x, model=dataclasses.replace(model, time_conditional=True), params=params)
    bad = tmp_path / "bad.msgpack"
    import flax.serialization

    bad.write_bytes(flax.serialization.msgpack_serialize({"format": "other"}))
    with pytest.raises(ValueError, match="format"):
        classifier_features.load_classifier(bad)
