"""Sampling through the run layer (`diffax.training.evaluate`): sample i depends only on (seed, i).

A class-conditional MLP on the labelled 2-D mixture, trained for a few steps, is sampled through
`evaluate.generate` with different chunk sizes (sampling.batch_size): labels are i mod K of the GLOBAL
index and the samples agree; the old behaviour (labels and keys restarting in every chunk) fails this.
"""

from __future__ import annotations

import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffax.training import builders, evaluate, presets, restore, train

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def conditional_run(tmp_path_factory):
    config = presets.load_config(os.path.join(REPO, "configs", "toy2d.py:gmm2d"))
    config.model.num_classes, config.model.hidden, config.model.num_layers = 3, 32, 2
    config.training.num_steps, config.training.checkpoint_every = 20, 20
    config.sampling.method, config.sampling.num_steps, config.sampling.num_samples = "ddim", 10, 23
    workdir = str(tmp_path_factory.mktemp("cond"))
    train.train_and_evaluate(builders.build(config), workdir)
    return config, workdir


def _generate(config, workdir, chunk):
    """Draws every sample afresh at this chunk size: the saved parts of an earlier call (which any chunk
    size may reuse) are removed first, so the samples compared come from this chunk size."""
    config = config.copy_and_resolve_references()
    config.sampling.batch_size = chunk
    shutil.rmtree(os.path.join(workdir, evaluate.PARTS_DIR), ignore_errors=True)
    return evaluate.generate(builders.build(config), workdir)[0]


@pytest.mark.slow
def test_labels_and_samples_do_not_depend_on_the_chunk_size(conditional_run):
    """Chunks of 7 and 10 (K = 3, N = 23: neither divides) give the samples of one chunk of 23. Each
    sample is computed by the same per-example program whatever the batch; we allow float32 rounding
    (rtol 1e-5) since XLA may tile a batch of 7 and of 23 differently. Labels: i mod 3 of the global index."""
    config, workdir = conditional_run
    exp = builders.build(config)
    np.testing.assert_array_equal(evaluate.sample_labels(exp), np.arange(23) % 3)
    whole = _generate(config, workdir, 0)
    assert whole.shape == (23, 2) and np.all(np.isfinite(whole))
    for chunk in (7, 10):
        np.testing.assert_allclose(_generate(config, workdir, chunk), whole, rtol=1e-5, atol=1e-6)


@pytest.mark.slow
def test_sample_i_is_the_run_of_its_own_key_and_label(conditional_run):
    """Row i of the samples is the sampler run alone on key fold_in(sample_key, i) for label i mod 3
    (rtol 1e-5): the definition `evaluate` documents. Control: the label (i + 1) mod 3 gives another sample."""
    config, workdir = conditional_run
    exp = builders.build(config)
    whole = _generate(config, workdir, 0)
    run = restore.restore_params(exp, workdir)
    sample_labeled, k = exp.sampler()
    key = restore.stream_key(config.seed, "sample")
    one = jax.jit(sample_labeled, static_argnums=2)
    for i in (0, 8, 22):
        x_i = one(run.params, jax.random.fold_in(key, i), 1, jnp.array([i % k], jnp.int32))
        np.testing.assert_allclose(np.asarray(x_i)[0], whole[i], rtol=1e-5, atol=1e-6)
        other = one(run.params, jax.random.fold_in(key, i), 1, jnp.array([(i + 1) % k], jnp.int32))
        assert np.max(np.abs(np.asarray(other)[0] - whole[i])) > 1e-4
