"""How much the chunk size (sampling.batch_size) changes the samples: float rounding only.

Sample i depends only on (seed, i) (`sampler_builders.per_example_sampler`), but the network sees a batch of
`batch_size` samples, and XLA compiles another program for each batch shape: its matmuls and convolutions
may group (vectorise, tile) the float32 sums differently, so the last bits of a sample differ with the
chunk size, and the sampler's steps carry those differences along. This trains two tiny runs through
`diffax.main.run` (the `python -m diffax.main` path), samples each with several chunk sizes on one device,
and prints the largest difference against chunk size 1 (and, for images, whether the uint8 samples of
samples.npz agree). "of tol" is max |diff| / (1e-6 + 1e-5 |x|) elementwise: the share of the tolerance the
tests hold chunk sizes and device counts to (rtol 1e-5, atol 1e-6; tests/test_sample_parts.py, test_evaluate.py).

Run:  python experiments/sample_chunk_rounding.py [--json]
Expected (2-core CPU, ~5 min, most of it compiling the UNet; gmm1d: 200 steps, DDPM-1000, 64 samples;
mnist:tiny: 20 steps, DDIM-20, 16 samples):
  gmm1d        chunk 7 vs 1: max |diff| 2.3e-06 (max |x| 2.8), 0.15 of tol, bitwise equal 0.125
  gmm1d        chunk 64 vs 1: max |diff| 1.7e-06 (max |x| 2.8), 0.15 of tol, bitwise equal 0.125
  mnist:tiny   chunk 5 vs 1: max |diff| 5.4e-07 (max |x| 1), 0.05 of tol, bitwise equal 0.996, uint8 equal True
  mnist:tiny   chunk 16 vs 1: max |diff| 5.4e-07 (max |x| 1), 0.05 of tol, bitwise equal 0.996, uint8 equal True
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile

import numpy as np

from diffax import main as main_lib
from diffax.evaluation.images import to_uint8
from diffax.training import presets

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RUNS = {  # name: (config, overrides, chunk sizes)
    "gmm1d": ("configs/gmm1d.py", {"training.num_steps": 200, "training.checkpoint_every": 200,
                                   "sampling.num_samples": 64}, (1, 7, 64)),
    "mnist:tiny": ("configs/mnist.py:tiny", {"training.num_steps": 20, "training.checkpoint_every": 20,
                                             "sampling.num_samples": 16, "sampling.num_steps": 20}, (1, 5, 16)),
}  # fmt: skip


def _config(path: str, overrides: dict):
    config = presets.load_config(os.path.join(REPO, path))
    for key, value in overrides.items():
        section, field = key.split(".")
        config[section][field] = value
    return config


def measure(name: str, root: str) -> dict:
    """{"chunk b vs 1": {"max_abs_diff", "of_tolerance", "bitwise_equal_fraction"[, "uint8_equal"]}, "max_abs_x"}."""
    path, overrides, chunks = RUNS[name]
    trained = os.path.join(root, name, "trained")
    main_lib.run(_config(path, overrides), trained, ["train"])
    x = {}
    for b in chunks:
        workdir = os.path.join(root, name, f"chunk{b}")
        shutil.copytree(trained, workdir)  # its own samples/ parts: nothing reused across chunk sizes
        x[b] = main_lib.run(_config(path, {**overrides, "sampling.batch_size": b}), workdir, ["sample"])["samples"]
    ref, out = x[chunks[0]], {"max_abs_x": float(np.max(np.abs(x[chunks[0]])))}
    for b in chunks[1:]:
        diff = np.abs(x[b] - ref)
        row = {"max_abs_diff": float(diff.max()), "bitwise_equal_fraction": float(np.mean(diff == 0)),
               "of_tolerance": float(np.max(diff / (1e-6 + 1e-5 * np.abs(ref))))}  # fmt: skip
        if "mnist" in name:
            row["uint8_equal"] = bool(np.array_equal(to_uint8(x[b]), to_uint8(ref)))
        out[f"chunk {b} vs {chunks[0]}"] = row
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args()
    root = tempfile.mkdtemp(prefix="diffax-chunk-rounding-")
    try:
        result = {name: measure(name, root) for name in RUNS}
    finally:
        shutil.rmtree(root, ignore_errors=True)
    if args.json:
        print(json.dumps(result))
        return
    for name, rows in result.items():
        for key, row in rows.items():
            if key != "max_abs_x":
                print(f"{name:12s} {key}: max |diff| {row['max_abs_diff']:.2g} (max |x| {rows['max_abs_x']:.2g}), "
                      f"{row['of_tolerance']:.2f} of tol, bitwise equal {row['bitwise_equal_fraction']:.3f}"
                      + (f", uint8 equal {row['uint8_equal']}" if "uint8_equal" in row else ""))  # fmt: skip


if __name__ == "__main__":
    main()
