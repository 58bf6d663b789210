"""The VLB gap to the true discretized NLL with the exact model: 1-D Gaussian data, 50 / 200 / 1000 steps.

The README's "VLB gap to true discretized NLL" row. The measurement is the one
tests/test_likelihood.py::test_vlb_oracle_bounds_true_nll_and_gap_shrinks_with_T makes (its
`diffax.evaluation.oracle_checks.discretized_gaussian_vlb`, here with reps = 32 draws per grid point
instead of the test's 8): data N(mu, sd^2) = N(0.1, 0.1^2) quantized to the 8-bit grid 2k/255 - 1 (bins with mass
< 1e-9 dropped, the rest renormalised), the model the exact eps of the continuous Gaussian (a
one-component `oracles.GaussianMixture`), the schedule linear T = 1000 respaced to the leading
50 / 200 / 1000 steps (one forward process, ever finer time grids). E_x0[VLB] is an exact sum over
the grid of the `likelihood.vlb_bpd` totals averaged over `reps` forward-noise draws; the gap is
E[VLB] - H(data), H the entropy of the quantized data in bits (5.720), which lower-bounds the
model's true discretized NLL, so the gap is an upper bound on how loose the VLB is. The standard
error is over the forward-noise draws. float64.

Run:  python experiments/vlb_gap.py [--reps 32] [--var_type fixed_small fixed_large] [--json]
Expected (reps = 32, this machine, ~1 min on CPU), gap in bits (s.e.):
  fixed_small: 25.1 (0.8) / 4.43 (0.2) / 0.72 (0.06) at 50 / 200 / 1000 steps
"""

from __future__ import annotations

import argparse
import json
import time

import jax

from diffax.evaluation import oracle_checks


def oracle_vlb(num_steps: int, var_type: str, reps: int) -> dict:
    """E_x0[VLB], its standard error and the data entropy H, in bits (`oracle_checks.discretized_gaussian_vlb`)."""
    vlb, se, entropy = oracle_checks.discretized_gaussian_vlb(num_steps, var_type, reps)
    return dict(num_steps=num_steps, vlb=vlb, se=se, entropy=entropy, gap=vlb - entropy)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=32, help="forward-noise draws per grid point")
    parser.add_argument("--steps", type=int, nargs="+", default=[50, 200, 1000])
    parser.add_argument("--var_type", nargs="+", default=["fixed_small"], choices=["fixed_small", "fixed_large"])
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args()
    start = time.perf_counter()
    with jax.enable_x64(True):
        rows = {vt: [oracle_vlb(n, vt, args.reps) for n in args.steps] for vt in args.var_type}
    results = dict(reps=args.reps, rows=rows, wall_s=round(time.perf_counter() - start, 1))
    if args.json:
        print(json.dumps(results))
        return
    h = next(iter(rows.values()))[0]["entropy"]
    print(f"1-D N(0.1, 0.1^2) on the 8-bit grid, H = {h:.3f} bits; exact eps; {args.reps} draws per grid point")
    print(f"{'var_type':<13}{'steps':>6}{'E[VLB] bits':>13}{'gap bits':>10}{'s.e.':>7}")
    for vt, rs in rows.items():
        for r in rs:
            print(f"{vt:<13}{r['num_steps']:>6}{r['vlb']:>13.3f}{r['gap']:>10.3f}{r['se']:>7.3f}")
    print(f"wall time {results['wall_s']} s")


if __name__ == "__main__":
    main()
