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
data distribution. Metric: the classifier FID (`diffax.training.image_eval.classifier_metrics`:
Fréchet distance of the penultimate features of experiments/train_classifier.py's classifier) of
``--num_samples`` samples against the 10 000 test images, and the classifier's accuracy on them.
FID is biased upwards at small N: compare within this table (equal N), not with published Inception
FIDs. Compile time (AOT ``lower().compile()``) is reported apart from the sampling time.

Outputs in ``--out`` (default <workdir>/ddim_steps/): ddim_steps.json, ddim_steps.png (the first
10 samples of every setting, one row each), and a table on stdout (``--json``: one JSON object).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

import jax  # noqa: E402
import numpy as np  # noqa: E402

ROWS = (("ddim", 0.0), ("ddim", 1.0), ("ddpm", 0.0))


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--workdir", default="runs/mnist_cond", help="mnist_small.py's workdir (its checkpoints)")
    p.add_argument("--classifier", default="runs/mnist_classifier/classifier.msgpack")
    p.add_argument("--data_path", default=os.path.join(os.path.dirname(REPO), "shared", "data", "mnist"))
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


def load_mnist_small(workdir: str, data_path: str):
    """(config, model, schedule, data_shape, ema_params, step) of an experiments/mnist_small.py run."""
    import importlib.util

    from diffax.training import loop

    spec = importlib.util.spec_from_file_location("mnist_small", os.path.join(REPO, "experiments", "mnist_small.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    cfg_file = os.path.join(workdir, loop.CHECKPOINT_DIR, "config.json")
    conditional, warmup = True, True
    if os.path.exists(cfg_file):
        with open(cfg_file) as f:
            run = json.load(f)
        conditional = run["model"].get("num_classes") is not None
        warmup = run["training"].get("ema_warmup", False)  # runs from before the option had none
    config = mod.small_config(data_path, conditional)
    config.training.ema_warmup = warmup
    model, schedule, data_shape, ema_params, step = loop._restore_ema_params(config, workdir)
    if not warmup:
        # A constant-decay EMA still holds decay^n of the (zero-output) initialisation: remove it exactly.
        from diffax.training import builders, optim

        init = builders.init_params(model, loop._key(config, loop._INIT_STREAM), data_shape)
        ema_params = optim.debias_ema(ema_params, init, config.training.ema_decay, step)
    return config, model, schedule, data_shape, ema_params, step


def main(argv=None) -> dict:
    args = parse_args(argv)
    from diffax import data
    from diffax.training import builders, image_eval, plots

    out_dir = args.out or os.path.join(args.workdir, "ddim_steps")
    os.makedirs(out_dir, exist_ok=True)
    config, model, schedule, data_shape, params, ckpt_step = load_mnist_small(args.workdir, args.data_path)
    test_images, _ = data.load_array("mnist_local", split="test", path=args.data_path)
    reference = image_eval.classifier_reference(args.classifier, test_images)  # test-set features, once
    num_classes = config.model.num_classes
    labels = None if num_classes is None else np.arange(args.num_samples) % num_classes

    results, grids = [], []
    for method, eta in ROWS:
        for steps in args.steps:
            if f"{_row_id(method, eta)}:{steps}" in args.skip:
                continue
            cfg = config.copy_and_resolve_references()
            cfg.unlock()
            cfg.sampling.method, cfg.sampling.num_steps, cfg.sampling.eta = method, steps, eta
            if method == "ddpm":
                cfg.diffusion.var_type = "fixed_large"  # sigma-hat (eps-model: the variance is not learned)
            fn = jax.jit(builders.build_sampler(cfg, model, schedule, data_shape), static_argnums=2)
            key = jax.random.PRNGKey(args.seed)
            t0 = time.perf_counter()
            compiled = fn.lower(params, key, args.num_samples).compile()
            t_compile = time.perf_counter() - t0
            t0 = time.perf_counter()
            x = np.asarray(jax.device_get(compiled(params, key)))
            t_run = time.perf_counter() - t0
            m = image_eval.reference_metrics(x, reference, sample_labels=labels)
            row = dict(method=method, eta=eta, steps=steps, classifier_fid=m["classifier_fid"],
                       sample_accuracy=m.get("sample_accuracy"), compile_s=t_compile, sample_s=t_run,
                       num_samples=args.num_samples)  # fmt: skip
            results.append(row)
            grids.append(x[:10])
            if not args.json:
                print(f"{method:5s} eta={eta:.0f} steps={steps:5d}  FID {row['classifier_fid']:8.3f}  "
                      f"acc {row['sample_accuracy'] or float('nan'):.3f}  compile {t_compile:5.1f} s  "
                      f"sample {t_run:6.1f} s", flush=True)  # fmt: skip

    summary = dict(checkpoint_step=ckpt_step, num_samples=args.num_samples, steps=args.steps, results=results)
    with open(os.path.join(out_dir, "ddim_steps.json"), "w") as f:
        json.dump(summary, f, indent=2)
    _figure(os.path.join(out_dir, "ddim_steps.png"), grids, results, plots)
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


def _figure(path, grids, results, plots) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    img = plots.image_grid(np.concatenate(grids), ncols=10)
    fig, ax = plt.subplots(figsize=(6, 0.6 * len(grids) + 0.5))
    ax.imshow(img[..., 0] if img.shape[-1] == 1 else img, cmap="gray")
    h = img.shape[0] / len(grids)
    ax.set_yticks([h * (i + 0.5) for i in range(len(grids))])
    ax.set_yticklabels([f"{r['method']} η={r['eta']:g} S={r['steps']}: FID {r['classifier_fid']:.2f}" for r in results],
                       fontsize=6)  # fmt: skip
    ax.set_xticks([])
    ax.set_title("first 10 samples per setting (labels 0..9)", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=150)
    plt.close(fig)


if __name__ == "__main__":
    main()
