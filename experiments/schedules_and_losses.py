r"""Linear vs cosine schedule x L_simple vs L_hybrid on MNIST: test bits/dim and classifier FID.

    python experiments/train_classifier.py --workdir=runs/mnist_classifier        # FID features (~1 min)
    python experiments/schedules_and_losses.py --workdir=runs/sched_losses --classifier=runs/mnist_classifier/classifier.msgpack

The cells of improved DDPM's ablation (Nichol & Dhariwal 2021, Tables 1-2), at CPU scale:
  schedule  'linear' (Ho et al. 2020: beta 1e-4 .. 0.02)  or  'cosine' (Nichol & Dhariwal eq. 17)
  loss      'simple': L_simple (Ho et al. eq. 14) with the fixed variance sigma_t^2 = beta_t
                      (var_type 'fixed_large', DDPM's CIFAR-10 setting)
            'simple_tilde': the 'simple' cell's network (the same checkpoint: L_simple does not train the
                      variance) sampled and scored with sigma_t^2 = beta-tilde_t (var_type 'fixed_small'),
                      so the table separates "learned Sigma" from "which fixed Sigma"
            'hybrid': L_simple + 0.001 L_vlb with learned Sigma (var_type 'learned_range', eq. 15-16)
Every run: ``configs/mnist.py:tiny`` (ch_mult (1, 2, 2), 1 res block, attention at 7x7), T = 1000, with
channels ``--ch``, batch ``--batch_size``, Adam ``--lr``, ``--num_steps`` steps, the same seed and data
order; then `python -m diffax.main --mode=sample,eval`'s code path (`diffax.training.evaluate`): ``--fid_samples``
EMA samples with ancestral sampling respaced to ``--sample_steps`` steps (improved DDPM sec. 4,
where learned variances matter most), their classifier FID against the 10 000 test images, and the
full-VLB bits/dim of the first ``--bpd_examples`` test images (every one of the 1000 terms + the prior).

Outputs in --workdir: one sub-directory per cell (checkpoints, samples.png, eval.json, loss.png),
schedules_and_losses.json, schedules_and_losses.png (samples of the cells), a table on stdout.
The numbers are those of a tiny model trained for minutes: compare the cells with each other, and
see the README for the papers' CIFAR-10 figures.
"""

from __future__ import annotations

import argparse
import json
import os
import time

from diffax.training import builders, evaluate, plots, presets, train

CELLS = (("linear", "simple"), ("linear", "simple_tilde"), ("linear", "hybrid"), ("cosine", "simple"),
         ("cosine", "simple_tilde"), ("cosine", "hybrid"))
MNIST_CONFIG = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs", "mnist.py")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--workdir", default="runs/sched_losses")
    p.add_argument("--classifier", default="runs/mnist_classifier/classifier.msgpack")
    p.add_argument("--data_path", default=None, help="MNIST IDX dir (default: configs/mnist.py's)")
    p.add_argument("--num_steps", type=int, default=1500)
    p.add_argument("--batch_size", type=int, default=64)
    p.add_argument("--lr", type=float, default=5e-4)
    p.add_argument("--ch", type=int, default=16)
    p.add_argument("--bpd_examples", type=int, default=64)
    p.add_argument("--fid_samples", type=int, default=200)
    p.add_argument("--sample_steps", type=int, default=100)
    p.add_argument("--cells", default="all", help="comma-separated subset, e.g. linear/simple,cosine/hybrid")
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    args.cells = CELLS if args.cells == "all" else tuple(tuple(c.split("/")) for c in args.cells.split(","))
    bad = [c for c in args.cells if c not in CELLS]
    if bad:
        p.error(f"--cells: unknown cell(s) {['/'.join(c) for c in bad]}; allowed: {['/'.join(c) for c in CELLS]}")
    args.data_path = args.data_path or presets.load_config(MNIST_CONFIG).data.path
    return args


def cell_config(args, schedule: str, loss: str):
    """``configs/mnist.py:tiny`` with the experiment's settings and the cell's schedule / loss."""
    c = presets.load_config(MNIST_CONFIG + ":tiny")
    c.data.path, c.model.ch = args.data_path, args.ch
    c.training.num_steps, c.training.batch_size, c.training.checkpoint_every = args.num_steps, args.batch_size, args.num_steps
    c.optim.lr = args.lr
    c.diffusion.schedule = schedule
    if loss == "simple":
        c.diffusion.loss_type, c.diffusion.var_type = "simple", "fixed_large"
    elif loss == "simple_tilde":
        c.diffusion.loss_type, c.diffusion.var_type = "simple", "fixed_small"
    else:
        c.diffusion.loss_type, c.diffusion.var_type = "hybrid", "learned_range"
    c.sampling.method, c.sampling.num_steps, c.sampling.num_samples = "ddpm", args.sample_steps, args.fid_samples
    c.eval.bpd_num_examples, c.eval.bpd_batch_size = args.bpd_examples, args.bpd_examples
    c.eval.classifier_path = args.classifier
    return c


def main(argv=None) -> dict:
    args = parse_args(argv)
    from absl import logging

    logging.set_verbosity(logging.WARNING)
    os.makedirs(args.workdir, exist_ok=True)
    results, grids = [], []
    for schedule, loss in args.cells:
        exp = builders.build(cell_config(args, schedule, loss))
        trained_as = "simple" if loss == "simple_tilde" else loss  # simple_tilde: the simple cell's checkpoint
        wd = os.path.join(args.workdir, f"{schedule}_{trained_as}")
        t0 = time.perf_counter()
        train.train_and_evaluate(builders.build(cell_config(args, schedule, trained_as)), wd)  # resumes: no-op if done
        t_train = time.perf_counter() - t0
        t0 = time.perf_counter()
        x = evaluate.sample(exp, wd)
        t_sample = time.perf_counter() - t0
        t0 = time.perf_counter()
        ev = evaluate.evaluate(exp, wd, samples=x)
        t_eval = time.perf_counter() - t0
        row = dict(schedule=schedule, loss=loss, test_bpd=ev["test_bpd"], test_bpd_stderr=ev["test_bpd_stderr"],
                   prior_bpd=ev["test_prior_bpd"], decoder_bpd=ev["test_decoder_bpd"],
                   classifier_fid=ev["classifier_fid"], train_s=t_train, sample_s=t_sample, eval_s=t_eval,
                   bpd_s=ev["bpd_seconds"], num_steps=args.num_steps)  # fmt: skip
        results.append(row)
        grids.append(x[:36])
        if not args.json:
            print(f"{schedule:6s} {loss:6s}  bits/dim {row['test_bpd']:.3f} ± {row['test_bpd_stderr']:.3f}  "
                  f"FID {row['classifier_fid']:.2f}  train {t_train:.0f} s  sample {t_sample:.0f} s  "
                  f"eval {t_eval:.0f} s", flush=True)  # fmt: skip
    summary = dict(settings={k: v for k, v in vars(args).items() if k not in ("json", "cells")}, results=results)
    with open(os.path.join(args.workdir, "schedules_and_losses.json"), "w") as f:
        json.dump(summary, f, indent=2)
    plots.save_image_panels(
        os.path.join(args.workdir, "schedules_and_losses.png"), grids, ncols=6, panel_width=3.0,
        titles=[f"{r['schedule']} / {r['loss']}\n{r['test_bpd']:.2f} bits/dim, FID {r['classifier_fid']:.2f}"
                for r in results],
    )  # fmt: skip
    if args.json:
        print(json.dumps(summary))
    else:
        print("| schedule | loss | test bits/dim | classifier FID | train s |\n|---|---|---|---|---|")
        for r in results:
            print(f"| {r['schedule']} | {r['loss']} | {r['test_bpd']:.3f} ± {r['test_bpd_stderr']:.3f} | "
                  f"{r['classifier_fid']:.2f} | {r['train_s']:.0f} |")  # fmt: skip
    return summary


if __name__ == "__main__":
    main()
