"""Evaluation: sample-quality statistics and the evaluators built on them.

  metrics              pure statistics: Frechet distance (FID), KID, Inception Score, streaming feature
                       moments, Wasserstein / sliced Wasserstein distances, nearest-mean mode weights
  classifier_features  a small classifier's penultimate features: its file format, classifier FID / KID /
                       accuracy (MNIST-scale stand-in for the Inception network)
  images               image models: uint8 <-> [-1, 1] (`to_model_range`, `to_uint8`), classifier FID against
                       a reference
  bits_per_dim         test-split bits/dim of the full VLB per image over every device and process (image i's
                       noise from fold_in(key, i): any batch size, device or process count)
  toys                 toy distributions: distances to held-out data, density mode weights, label accuracy
  batching             fixed-size zero-padded batches (one compiled program for any N)
  inception_metrics    FID / Inception Score / KID with the FID Inception-v3 (pytorch-fid's weights), uint8
                       samples, features sharded over devices and processes, cached reference statistics
  oracle_checks        measurements on analytic models (VLB gap of a discretized Gaussian, sampler
                       convergence orders), shared by the tests that assert them and the experiments
"""

from diffax.evaluation import batching, bits_per_dim, classifier_features, images, metrics, toys  # noqa: F401

# inception_metrics builds on diffax.models.inception: import it explicitly
# (`from diffax.evaluation import inception_metrics`).

# oracle_checks imports the samplers and diffrax: import it explicitly (`from diffax.evaluation import oracle_checks`).
