r"""DDPM (L_simple) vs EDM vs flow matching on MNIST: the same UNet, equal training steps, classifier FID per NFE.

    python experiments/train_classifier.py --workdir=runs/mnist_classifier
    python experiments/objectives_mnist.py --root=runs/objectives --classifier=runs/mnist_classifier/classifier.msgpack

Trains (or resumes, or reuses when already at ``--num_steps``) three runs of ``configs/mnist.py:<size>``,
``:<size>,edm`` and ``:<size>,flow`` under ``--root`` through ``python -m diffax.main --mode=train``: the same
UNet (``--size`` tiny: ch 16, small: ch 32; 1 res block), batch, optimizer, EMA and number of steps; only
the objective (and what it implies: EDM's preconditioning, flow matching's velocity target) differs. Then,
with `experiments/sampler_fid.py`, the classifier FID of ``--num_samples`` samples at each NFE with each
objective's natural sampler(s), from the same seed:
  DDPM-trained   DDIM (eta 0, 'leading' as the run's config), ancestral DDPM (sigma^2 = beta), and EDM's
                 Heun sampler through `diffax.edm.denoiser_from_discrete` (the discrete model as an EDM
                 denoiser: the issue's "DDPM model via edm_sampler vs DDIM at equal NFE")
  EDM-trained    EDM Algorithm 2 (Heun, 2N - 1 NFE, rho 7, no churn)
  flow-trained   Heun (2N NFE) and Euler (N NFE) on the flow ODE
Rows other than each objective's main sampler stop at NFE 50 (`ROWS`). The wall time of each training run
is reported (equal steps; equal wall time within the per-step cost of
each objective's loss, which is the same network call).

Measured (2-core CPU, --size=tiny --num_steps=2000 --num_samples=200; table in README "Continuous time and EDM"):
training 1622 / 2707 / 1028 s (DDPM / EDM / flow, at varying load), the FID cells ~1 h in all (an NFE-1000 cell
of 200 samples 5-15 min). Flow matching best at every NFE (0.92 from 34 NFE); EDM-trained at 35 NFE 1.47 vs
DDPM-trained ancestral at 1000 steps 1.03.

Outputs in ``--root``: objectives_mnist.json (each cell also in <run>/objectives_mnist_<row>_nfe<k>.json, reused
by a re-run with the same checkpoint step, samples, seed and classifier; the cells run in order of NFE) and a table on stdout (``--json``: one JSON object).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import sampler_fid  # noqa: E402

from diffax.training import restore  # noqa: E402
from diffax.training.logging import read_metrics  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ROWS = {  # objective -> (config variant, [(row label, sampler_fid row spec, largest NFE it runs at or None)])
    "ddpm": ("", [("DDPM-trained, DDIM", "ddim", 50), ("DDPM-trained, ancestral DDPM", "ddpm", None),
                  ("DDPM-trained, EDM Heun (denoiser_from_discrete)", "edm", 50)]),
    "edm": (",edm", [("EDM-trained, EDM Heun", "edm", None)]),
    "flow": (",flow", [("flow-trained, Heun", "heun", None), ("flow-trained, Euler", "euler", 50)]),
}  # fmt: skip
"""The NFE-1000 cells (the CPU cost of 1000 network calls per sample) only for each objective's main sampler."""


def train(workdir: str, variant: str, num_steps: int, log) -> float:
    """Trains ``configs/mnist.py:<variant>`` to ``num_steps`` in ``workdir`` (resumes; nothing if done);
    returns the seconds this call spent."""
    if os.path.isdir(os.path.join(workdir, "checkpoints")) and (restore.latest_step(workdir) or 0) >= num_steps:
        log(f"{workdir}: already trained to {num_steps} steps")
        return 0.0
    t0 = time.perf_counter()
    cmd = [sys.executable, "-m", "diffax.main", f"--config={os.path.join(ROOT, 'configs', 'mnist.py')}:{variant}",
           f"--workdir={workdir}", "--mode=train", f"--config.training.num_steps={num_steps}"]  # fmt: skip
    log(" ".join(cmd))
    subprocess.run(cmd, check=True, cwd=ROOT)
    return time.perf_counter() - t0


def train_seconds(workdir: str) -> float:
    """Seconds the run's logged training steps took: sum of steps_averaged / steps_per_sec over metrics.jsonl
    (the training loop's own timing, so the machine's load at that time counts; compile time included)."""
    return float(sum(r["steps_averaged"] / r["steps_per_sec"] for r in read_metrics(workdir)
                     if r.get("steps_per_sec") and r.get("steps_averaged")))  # fmt: skip


def _cached(path: str, settings: dict) -> dict | None:
    """A cell's saved result if it was measured with exactly these settings (re-runs are free)."""
    if not os.path.exists(path):
        return None
    with open(path) as f:
        saved = json.load(f)
    return saved["result"] if saved.get("settings") == settings else None


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--root", default="runs/objectives", help="directory of the three runs")
    p.add_argument("--classifier", default="runs/mnist_classifier/classifier.msgpack")
    p.add_argument("--size", default="tiny", choices=["tiny", "small"])
    p.add_argument("--num_steps", type=int, default=2000)
    p.add_argument("--nfe", default="10,20,35,50,1000")
    p.add_argument("--num_samples", type=int, default=500)
    p.add_argument("--objectives", default="ddpm,edm,flow")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    args = p.parse_args(argv)
    args.nfe = [int(n) for n in args.nfe.split(",")]
    args.objectives = [o for o in args.objectives.split(",") if o]
    unknown = sorted(set(args.objectives) - set(ROWS))
    if unknown:
        p.error(f"--objectives: unknown {unknown}; allowed {sorted(ROWS)}")
    return args


def main(argv=None) -> dict:
    args = parse_args(argv)
    log = (lambda *_: None) if args.json else (lambda s: print(s, flush=True))
    os.makedirs(args.root, exist_ok=True)
    runs = {}
    for obj in args.objectives:  # train first: every cell below samples a finished run
        workdir = os.path.join(args.root, obj)
        seconds = train(workdir, args.size + ROWS[obj][0], args.num_steps, log)
        runs[obj] = dict(workdir=workdir, checkpoint_step=restore.latest_step(workdir),
                         train_seconds=train_seconds(workdir), train_seconds_this_call=seconds)  # fmt: skip
    results = []
    for nfe in sorted(args.nfe):  # the cheap cells of every objective first
        for obj in args.objectives:
            for name, spec, max_nfe in ROWS[obj][1]:
                if max_nfe is not None and nfe > max_nfe:
                    continue
                r = _cell(runs[obj], spec, nfe, args, log)
                results.append(dict(r, name=name, objective=obj))
    out = dict(size=args.size, num_steps=args.num_steps, num_samples=args.num_samples, nfe=args.nfe, runs=runs,
               results=results)  # fmt: skip
    with open(os.path.join(args.root, "objectives_mnist.json"), "w") as f:
        json.dump(out, f, indent=2)
    if args.json:
        print(json.dumps(out))
    else:
        print(sampler_fid.table(results, args.nfe, name=lambda r: r["name"]))
        print("training: " + "; ".join(f"{o} {r['checkpoint_step']} steps in {r['train_seconds']:.0f} s"
                                       for o, r in runs.items()))  # fmt: skip
    return out


def _cell(run: dict, spec: str, nfe: int, args, log) -> dict:
    """One cell (row ``spec`` at ``nfe``) of a run: from its cache file in the run's workdir when it was measured
    with the same checkpoint step, samples, seed and classifier, else measured now and cached."""
    path = os.path.join(run["workdir"], f"objectives_mnist_{spec}_nfe{nfe}.json")
    settings = dict(step=run["checkpoint_step"], num_samples=args.num_samples, seed=args.seed,
                    classifier=os.path.abspath(args.classifier))  # fmt: skip
    cached = _cached(path, settings)
    if cached is not None:
        return cached
    summary = sampler_fid.sampler_fid(run["workdir"], args.classifier, [spec], [nfe], num_samples=args.num_samples,
                                      seed=args.seed, log=log)  # fmt: skip
    (r,) = summary["results"]
    with open(path, "w") as f:
        json.dump(dict(settings=settings, result=r), f)
    return r


if __name__ == "__main__":
    main()
