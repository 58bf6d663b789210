r"""DDPM vs DDIM at 10/20/50/100/1000 steps on MNIST: classifier FID (the shape of DDIM's Table 1).

    python experiments/mnist_small.py --workdir=runs/mnist_cond --num_steps=2000   # the model (~30 min CPU)
    python experiments/train_classifier.py --workdir=runs/mnist_classifier          # the FID features (~1 min)
    python experiments/ddim_steps.py --workdir=runs/mnist_cond --classifier=runs/mnist_classifier/classifier.msgpack

Rows (Song et al. 2021, Table 1 / sec. 5.1):
  ddim eta=0   deterministic DDIM (eq. 12, sigma = 0)
  ddim eta=1   DDIM with sigma = sqrt(beta~) (eq. 16, eta = 1). This is exactly ancestral DDPM with
               sigma^2 = beta~ on the respaced schedule (same draws, same numbers), so it is the
               "DDPM, small variance" row too.
  ddpm (sigma-hat)  ancestral sampling with the LARGE variance sigma^2 = beta' of the respaced
               schedule (betas recomputed from abar on the subsequence, Nichol & Dhariwal 2021 sec. 4):
               DDIM's Table 1 row sigma-hat, DDPM's CIFAR-10 setting.
Columns: number of sampling steps S (network calls), "leading" spacing for DDIM as in its paper.

The model is experiments/mnist_small.py's class-conditional UNet (p_uncond = 0.1), sampled here
without guidance (w = 0) for the balanced labels i mod 10, so the samples follow the class-balanced
data distribution. Metric: the classifier FID (`diffax.evaluation.images.reference_metrics`:
Fréchet distance of the penultimate features of experiments/train_classifier.py's classifier) of
``--num_samples`` samples against the 10 000 test images, and the classifier's accuracy on them.
FID is biased upwards at small N: compare within this table (equal N), not with published Inception
FIDs. Compile time (AOT ``lower().compile()``) is reported apart from the sampling time. The run is
restored with its saved config (`diffax.training.restore.restore_ema`); a run trained without the EMA
warm-up (older runs) has the initialisation's share of its EMA removed exactly (``debias=True``).

Outputs in ``--out`` (default <workdir>/ddim_steps/): ddim_steps.json, ddim_steps.png (the first
10 samples of every setting, one row each), and a table on stdout (``--json``: one JSON object).
"""

from __future__ import annotations

import argparse
import json
import os
import time

import jax
import ml_collections
import numpy as np

from diffax import data
from diffax.evaluation import images
from diffax.training import builders, plots, restore, sampler_builders

ROWS = (("ddim", 0.0), ("ddim", 1.0), ("ddpm", 0.0))


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--workdir", default="runs/mnist_cond", help="mnist_small.py's workdir (its checkpoints)")
    p.add_argument("--classifier", default="runs/mnist_classifier/classifier.msgpack")
    p.add_argument("--data_path", default=None, help="MNIST IDX dir of the test images (default: the run's data.path)")
    p.add_argument("--steps", default="10,20,50,100,1000", help="comma-separated numbers of sampling steps")
    p.add_argument("--num_samples", type=int, default=200)
    p.add_argument("--skip", default="", help="cells not to run (CPU budget), e.g. 'ddim1:1000' (row:steps; rows "
                   "ddim0, ddim1, ddpm); they show as '-' in the table")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None, help="output directory (default <workdir>/ddim_steps)")
    p.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    args = p.parse_args(argv)
    args.steps = [int(s) for s in args.steps.split(",")]
    args.skip = {c.strip() for c in args.skip.split(",") if c.strip()}
    if args.num_samples < 10:
        p.error(f"--num_samples must be >= 10 (FID needs a covariance), got {args.num_samples}")
    return args


def setting_config(config: ml_collections.ConfigDict, method: str, eta: float, steps: int) -> ml_collections.ConfigDict:
    """The run's config with the sampler of one table cell."""
    cfg = config.copy_and_resolve_references()
    cfg.sampling.method, cfg.sampling.num_steps, cfg.sampling.eta = method, steps, eta
    if method == "ddpm":
        cfg.diffusion.var_type = "fixed_large"  # sigma-hat (eps-model: the variance is not learned)
    return cfg


def timed_samples(sample_fn, params, key: jax.Array, n: int) -> tuple[np.ndarray, float, float]:
    """(n samples of the jitted ``sample_fn(params, key, n)``, compile seconds, sampling seconds)."""
    t0 = time.perf_counter()
    compiled = jax.jit(sample_fn, static_argnums=2).lower(params, key, n).compile()
    t_compile = time.perf_counter() - t0
    t0 = time.perf_counter()
    x = np.asarray(jax.device_get(compiled(params, key)))
    return x, t_compile, time.perf_counter() - t0


def main(argv=None) -> dict:
    args = parse_args(argv)
    out_dir = args.out or os.path.join(args.workdir, "ddim_steps")
    os.makedirs(out_dir, exist_ok=True)
    # debias=None: a run trained without the EMA warm-up (older runs) still holds decay^n of the
    # initialisation; restore_ema removes it exactly.
    run = restore.restore_ema(args.workdir, debias=None)
    exp, run_config = run.experiment, restore.read_run_config(args.workdir)
    test_images, _ = data.load_array("mnist_local", split="test", path=args.data_path or exp.data.path)
    reference = images.classifier_reference(args.classifier, test_images)  # test-set features, once
    labels = None if exp.num_classes is None else np.arange(args.num_samples) % exp.num_classes

    results, grids = [], []
    for method, eta in ROWS:
        for steps in args.steps:
            if f"{_row_id(method, eta)}:{steps}" in args.skip:
                continue
            sample_fn = sampler_builders.build_sampler(setting_config(run_config, method, eta, steps), exp.model,
                                                       exp.schedule, exp.data.shape)  # fmt: skip
            x, t_compile, t_run = timed_samples(sample_fn, run.params, jax.random.PRNGKey(args.seed), args.num_samples)
            m = images.reference_metrics(x, reference, sample_labels=labels)
            row = dict(method=method, eta=eta, steps=steps, classifier_fid=m["classifier_fid"],
                       sample_accuracy=m.get("sample_accuracy"), compile_s=t_compile, sample_s=t_run,
                       num_samples=args.num_samples)  # fmt: skip
            results.append(row)
            grids.append(x[:10])
            if not args.json:
                print(f"{method:5s} eta={eta:.0f} steps={steps:5d}  FID {row['classifier_fid']:8.3f}  "
                      f"acc {row['sample_accuracy'] or float('nan'):.3f}  compile {t_compile:5.1f} s  "
                      f"sample {t_run:6.1f} s", flush=True)  # fmt: skip

    summary = dict(checkpoint_step=run.step, num_samples=args.num_samples, steps=args.steps, results=results)
    with open(os.path.join(out_dir, "ddim_steps.json"), "w") as f:
        json.dump(summary, f, indent=2)
    if grids:
        plots.save_image_panels(
            os.path.join(out_dir, "ddim_steps.png"), [np.concatenate(grids)], ncols=10, panel_width=6.0,
            row_labels=[f"{r['method']} η={r['eta']:g} S={r['steps']}: FID {r['classifier_fid']:.2f}" for r in results],
            title="first 10 samples per setting (labels 0..9)",
        )  # fmt: skip
    if args.json:
        print(json.dumps(summary))
    else:
        print(_table(results, args.steps))
    return summary


def _row_id(method: str, eta: float) -> str:
    return "ddpm" if method == "ddpm" else f"ddim{eta:g}"


def _table(results, steps) -> str:
    head = "| classifier FID (acc) | " + " | ".join(f"S={s}" for s in steps) + " |"
    lines = [head, "|" + "---|" * (len(steps) + 1)]
    for method, eta in ROWS:
        cells = []
        for s in steps:
            r = next((r for r in results if r["method"] == method and r["eta"] == eta and r["steps"] == s), None)
            if r is None:
                cells.append("-")
                continue
            acc = "" if r["sample_accuracy"] is None else f" ({100 * r['sample_accuracy']:.0f}%)"
            cells.append(f"{r['classifier_fid']:.2f}{acc}")
        name = "DDPM, sigma-hat (sigma^2 = beta)" if method == "ddpm" else f"DDIM eta={eta:g}"
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
