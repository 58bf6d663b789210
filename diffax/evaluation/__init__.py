"""Evaluation: sample-quality statistics and the evaluators built on them.

  metrics              pure statistics: Frechet distance (FID), KID, Inception Score, streaming feature
                       moments, Wasserstein / sliced Wasserstein distances, nearest-mean mode weights
  classifier_features  a small classifier's penultimate features: its file format, classifier FID / KID /
                       accuracy (MNIST-scale stand-in for the Inception network)
  images               image models: test-split bits/dim of the full VLB, classifier FID against a reference
  toys                 toy distributions: distances to held-out data, density mode weights, label accuracy
  batching             fixed-size zero-padded batches (one compiled program for any N)
  sharded              rows placed on the Mesh's data axis of every process and gathered back; sharded
                       test-split bits/dim (image i's noise from fold_in(key, i): any device/process count)
  inception_metrics    FID / Inception Score / KID with the FID Inception-v3 (pytorch-fid's weights), uint8
                       samples, features sharded over devices and processes, cached reference statistics
  oracle_checks        measurements on analytic models (VLB gap of a discretized Gaussian, sampler
                       convergence orders), shared by the tests that assert them and the experiments
"""

from diffax.evaluation import batching, classifier_features, images, metrics, sharded, toys  # noqa: F401

# inception_metrics builds on diffax.models.inception: import it explicitly
# (`from diffax.evaluation import inception_metrics`).

# oracle_checks imports the samplers and diffrax: import it explicitly (`from diffax.evaluation import oracle_checks`).
