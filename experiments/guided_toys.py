"""The README's "Score-based and guided toys" table, through the entry point's code path (`diffax.main.run`).

  1. NCSN on gmm2d: configs/ncsn_toy2d.py:gmm2d as shipped (3000 steps DSM, annealed Langevin 10 levels x 100
     steps, 2000 samples): eval.json's sliced-W1 ratio and density mode weights.
  2. A noise-aware classifier on gmm2d: configs/noisy_classifier.py:gmm2d (2000 steps): held-out accuracy at
     t = 0, T/4, T/2, 3T/4, T-1.
  3. DDPM on gmm2d (configs/toy2d.py:gmm2d, --ddpm_steps steps) sampled with DDIM 100 steps, unguided and
     with classifier guidance by (2) at scales 1 and 3: label accuracy (how often the component a sample was
     drawn for, i mod 3, is its most likely one) and the sliced-W1 ratio.

Equivalent commands (what this script runs):
  python -m diffax.main --config=configs/ncsn_toy2d.py:gmm2d --workdir=W/ncsn --mode=train,sample,eval
  python -m diffax.main --config=configs/noisy_classifier.py:gmm2d --workdir=W/clf --mode=train,eval
  python -m diffax.main --config=configs/toy2d.py:gmm2d --workdir=W/ddpm --mode=train --config.training.num_steps=2000
  python -m diffax.main --config=configs/toy2d.py:gmm2d --workdir=W/ddpm --mode=sample,eval --config.training.num_steps=2000 \\
      --config.sampling.method=ddim --config.sampling.num_steps=100 \\
      --config.sampling.classifier_workdir=W/clf --config.sampling.classifier_scale=3.0

Run:  python experiments/guided_toys.py [--workdir runs/guided_toys] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import time

from absl import logging

from diffax import main as main_lib
from diffax.training import presets

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _config(spec: str, **overrides):
    config = presets.load_config(os.path.join(REPO, "configs", spec))
    for key, value in overrides.items():
        section, field = key.split("__")
        config[section][field] = value
    return config


def ncsn_row(workdir: str) -> dict:
    t0 = time.perf_counter()
    ev = main_lib.run(_config("ncsn_toy2d.py:gmm2d"), os.path.join(workdir, "ncsn"), ["train", "sample", "eval"])["eval"]
    return dict(distance_ratio=ev["distance_ratio"], density_mode_weights=ev["density_mode_weights"],
                true_mode_weights=ev["true_mode_weights"], seconds=time.perf_counter() - t0)


def classifier_row(workdir: str) -> dict:
    t0 = time.perf_counter()
    ev = main_lib.run(_config("noisy_classifier.py:gmm2d"), os.path.join(workdir, "clf"), ["train", "eval"])["eval"]
    return dict(accuracy_at_t=ev["accuracy_at_t"], seconds=time.perf_counter() - t0)


def guidance_rows(workdir: str, ddpm_steps: int) -> list[dict]:
    ddpm = os.path.join(workdir, "ddpm")
    base = dict(training__num_steps=ddpm_steps, sampling__method="ddim", sampling__num_steps=100)
    main_lib.run(_config("toy2d.py:gmm2d", **base), ddpm, ["train"])
    rows = []
    for scale in (0.0, 1.0, 3.0):
        extra = {} if not scale else dict(sampling__classifier_workdir=os.path.join(workdir, "clf"),
                                          sampling__classifier_scale=scale)  # fmt: skip
        t0 = time.perf_counter()
        ev = main_lib.run(_config("toy2d.py:gmm2d", **base, **extra), ddpm, ["sample", "eval"])["eval"]
        rows.append(dict(scale=scale, label_accuracy=ev.get("label_accuracy"), distance_ratio=ev["distance_ratio"],
                         seconds=time.perf_counter() - t0))  # fmt: skip
    return rows


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", default=os.path.join(REPO, "runs", "guided_toys"))
    parser.add_argument("--ddpm_steps", type=int, default=2000)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    logging.set_verbosity(logging.WARNING)
    result = dict(ncsn=ncsn_row(args.workdir), classifier=classifier_row(args.workdir),
                  guidance=guidance_rows(args.workdir, args.ddpm_steps))  # fmt: skip
    if args.json:
        print(json.dumps(result))
        return result
    n = result["ncsn"]
    print(f"NCSN gmm2d: sliced-W1 ratio {n['distance_ratio']:.2f}; density mode weights "
          f"{' / '.join(f'{w:.3f}' for w in n['density_mode_weights'])} (true "
          f"{' / '.join(f'{w:.1f}' for w in n['true_mode_weights'])}); {n['seconds']:.0f} s")
    acc = result["classifier"]["accuracy_at_t"]
    print(f"noisy classifier: accuracy {' / '.join(f'{v:.2f}' for v in acc.values())} at t = {' / '.join(acc)}; "
          f"{result['classifier']['seconds']:.0f} s")
    print(f"{'scale':>6}{'label accuracy':>16}{'sliced-W1 ratio':>17}")
    for r in result["guidance"]:
        la = "-" if r["label_accuracy"] is None else f"{r['label_accuracy']:.3f}"
        print(f"{r['scale']:>6.1f}{la:>16}{r['distance_ratio']:>17.2f}")
    return result


if __name__ == "__main__":
    main()
