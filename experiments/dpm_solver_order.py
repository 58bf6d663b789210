"""Measured convergence order of DPM-Solver++(2M) and DDIM (eta = 0) on the exact eps of the oracles.

The README's "DPM-Solver++(2M) measured order" row. The measurement is the one
tests/test_dpm_solver.py::test_second_order_convergence_to_the_ode_solution asserts (its
`measured_orders`: both call `diffax.evaluation.oracle_checks.sampler_convergence_orders`): on DDPM's linear schedule (T = 1000) and the exact eps
of `oracles.seed_mixture_1d` / `oracles.anisotropic_mixture_2d`, n = 256 points x_T ~ N(0, I) are
integrated over the time-uniform indices round(linspace(999, 100, M + 1)), M = 10, 20, 40, 80:
DPM-Solver++(2M) with final_step='none' (ends at index 100), DDIM read off its trajectory after
M steps (same index). The error is the RMS distance to the adaptive diffrax solve of the same
probability-flow ODE (`ode.ode_solve`, rtol = atol = 1e-10), and the order is the least-squares
slope of -log(error) against log M. float64 throughout.

Run:  python experiments/dpm_solver_order.py [--json]
Expected (this machine, ~1 min on CPU):
  seed_1d         DPM-Solver++(2M) 2.27   DDIM 1.02
  anisotropic_2d  DPM-Solver++(2M) 2.15   DDIM 1.01
"""

from __future__ import annotations

import argparse
import json
import time

import jax

from diffax import oracles, schedules
from diffax.evaluation import oracle_checks

MIXTURES = {"seed_1d": oracles.seed_mixture_1d, "anisotropic_2d": oracles.anisotropic_mixture_2d}


def measured_orders(data: str) -> dict:
    """{"dpm_2m": order, "ddim": order, "errors": {...}, "steps": [...]} for one oracle (x64 on)."""
    s = schedules.linear(1000)
    return oracle_checks.sampler_convergence_orders(MIXTURES[data](s), s)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args()
    start = time.perf_counter()
    with jax.enable_x64(True):
        results = {name: measured_orders(name) for name in MIXTURES}
    results["wall_s"] = round(time.perf_counter() - start, 1)
    if args.json:
        print(json.dumps(results))
        return
    steps = results["seed_1d"]["steps"]
    print(f"RMS error vs the exact ODE solution at index 100 (M = {steps}); order = slope of -log err vs log M")
    print(f"{'data':<16}{'sampler':<18}{'order':>7}   errors")
    for name in MIXTURES:
        res = results[name]
        for key, label in (("dpm_2m", "DPM-Solver++(2M)"), ("ddim", "DDIM (eta=0)")):
            errs = " ".join(f"{e:.2e}" for e in res["errors"][key])
            print(f"{name:<16}{label:<18}{res[key]:>7.2f}   {errs}")
    print(f"wall time {results['wall_s']} s")


if __name__ == "__main__":
    main()
