r"""Classifier FID of a trained MNIST run per sampling method and number of network evaluations (NFE).

    python experiments/train_classifier.py --workdir=runs/mnist_classifier                     # FID features
    python experiments/sampler_fid.py --workdir=runs/mnist_ddpm --classifier=runs/mnist_classifier/classifier.msgpack \
        --rows=ddim,edm,dpm_solver_pp:order=2 --nfe=10,20,35,50

Each row is a `sampling.method` of the CLI with optional `sampling.*` overrides, ``method[:key=value...]``
(e.g. ``ddim:eta=1``, ``dpm_solver_pp:order=3``, ``unipc:order=2:unipc_variant=bh1``); the run's own config
supplies everything else, so a row samples exactly what ``python -m diffax.main --mode=sample`` with that
method would. Each cell asks for an NFE and reports the NFE the method actually spends (`steps_for_nfe`):
  ddpm, ddim, dpm_solver_pp, unipc, euler   one network call per step:      N = NFE
  edm (EDM Algorithm 2, Heun)               2N - 1 calls (no correction at the last step): N = (NFE + 1) // 2
  heun (flow ODE)                           2N calls:                        N = NFE // 2
'ddpm' is ancestral sampling with sigma^2 = beta (`sampling.num_steps`-respaced, DDPM's CIFAR-10 setting).
Every cell draws its samples from the same seed (the same x_T for the methods that start from N(0, I)).

Metric: the classifier FID (`diffax.evaluation.images.reference_metrics`, the penultimate features of
experiments/train_classifier.py's classifier) of ``--num_samples`` samples against the 10 000 test images.
FID is biased upwards at small N: compare cells of equal N only. Compile time is reported apart.

Measured: README "Quality per NFE" (the DDPM-trained mnist:tiny run of objectives_mnist.py, 200 samples,
NFE 5 / 10 / 20 / 50, eight rows: ~25 min at load ~5): UniPC-3 and DPM-Solver++(3) at 10 NFE 1.26, DDIM at 50 1.38.

Outputs: a table on stdout (``--json``: one JSON object) and ``<out>/sampler_fid.json``.
`experiments/objectives_mnist.py` runs this for a DDPM-, an EDM- and a flow-matching-trained run.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any

import jax
import ml_collections
import numpy as np

from diffax import data
from diffax.evaluation import images
from diffax.training import builders, restore, sampler_builders

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from ddim_steps import timed_samples  # noqa: E402  (compile time apart from sampling time)

__all__ = ["parse_row", "steps_for_nfe", "row_config", "sampler_fid"]


def parse_row(spec: str) -> tuple[str, dict[str, Any]]:
    """``'method:key=value:...'`` -> (method, {sampling key: value}); values parsed as JSON where they can be."""
    method, *pairs = spec.strip().split(":")
    overrides = {}
    for pair in pairs:
        if "=" not in pair:
            raise ValueError(f"row {spec!r}: expected key=value after the method, got {pair!r}")
        k, v = pair.split("=", 1)
        try:
            overrides[k] = json.loads(v)
        except json.JSONDecodeError:
            overrides[k] = v
    return method, overrides


def steps_for_nfe(method: str, nfe: int) -> tuple[int, int]:
    """(sampling.num_steps, the NFE those steps spend) of ``method`` for a requested ``nfe`` (never more)."""
    if method == "edm":
        n = max((nfe + 1) // 2, 1)
        return n, 2 * n - 1
    if method == "heun":
        n = max(nfe // 2, 1)
        return n, 2 * n
    return nfe, nfe


def row_config(config: ml_collections.ConfigDict, method: str, overrides: dict[str, Any],
               num_steps: int) -> ml_collections.ConfigDict:  # fmt: skip
    """The run's config with one cell's sampler."""
    cfg = config.copy_and_resolve_references()
    cfg.sampling.method, cfg.sampling.num_steps = method, num_steps
    if method == "ddpm":
        cfg.diffusion.var_type = "fixed_large"  # sigma^2 = beta (an eps-model's variance is not learned)
    for k, v in overrides.items():
        if k not in cfg.sampling:
            raise ValueError(f"row {method!r}: sampling.{k} is not a config key; keys: {sorted(cfg.sampling)}")
        cfg.sampling[k] = v
    return cfg


def sampler_fid(workdir: str, classifier: str, rows: list[str], nfes: list[int], *, num_samples: int = 500,
                seed: int = 0, data_path: str | None = None, log=print) -> dict:  # fmt: skip
    """{"checkpoint_step", "objective", "num_samples", "results": [{row, method, nfe, nfe_used, num_steps,
    classifier_fid, sample_accuracy, compile_s, sample_s}]} of the run in ``workdir``."""
    run = restore.restore_ema(workdir, debias=None)
    exp, config = run.experiment, restore.read_run_config(workdir)
    test_images, _ = data.load_array("mnist_local", split="test", path=data_path or exp.data.path)
    reference = images.classifier_reference(classifier, test_images)
    labels = None if exp.num_classes is None else np.arange(num_samples) % exp.num_classes
    results = []
    for spec in rows:
        method, overrides = parse_row(spec)
        for nfe in nfes:
            num_steps, used = steps_for_nfe(method, nfe)
            cfg = row_config(config, method, overrides, num_steps)
            sample_fn = sampler_builders.build_sampler(cfg, exp.model, exp.schedule, exp.data.shape)
            x, t_compile, t_run = timed_samples(sample_fn, run.params, jax.random.PRNGKey(seed), num_samples)
            m = images.reference_metrics(x, reference, sample_labels=labels)
            row = dict(row=spec, method=method, nfe=nfe, nfe_used=used, num_steps=num_steps,
                       classifier_fid=m["classifier_fid"], sample_accuracy=m.get("sample_accuracy"),
                       compile_s=t_compile, sample_s=t_run)  # fmt: skip
            results.append(row)
            log(f"{spec:28s} NFE {used:5d}  FID {row['classifier_fid']:8.3f}  compile {t_compile:5.1f} s  "
                f"sample {t_run:6.1f} s")  # fmt: skip
    return dict(workdir=workdir, checkpoint_step=run.step, objective=builders.objective(config),
                num_samples=num_samples, seed=seed, results=results)


def table(results: list[dict], nfes: list[int], name=lambda r: r["row"]) -> str:
    """Markdown: one row per (name), one column per requested NFE; a cell 'FID (NFE used)'."""
    names = list(dict.fromkeys(name(r) for r in results))
    lines = ["| classifier FID (NFE used) | " + " | ".join(f"NFE {n}" for n in nfes) + " |",
             "|" + "---|" * (len(nfes) + 1)]  # fmt: skip
    for nm in names:
        cells = []
        for n in nfes:
            r = next((r for r in results if name(r) == nm and r["nfe"] == n), None)
            cells.append("-" if r is None else f"{r['classifier_fid']:.2f} ({r['nfe_used']})")
        lines.append(f"| {nm} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--workdir", required=True, help="a trained MNIST run (its checkpoints)")
    p.add_argument("--classifier", default="runs/mnist_classifier/classifier.msgpack")
    p.add_argument("--rows", default="ddim", help="comma-separated method[:key=value...] rows")
    p.add_argument("--nfe", default="10,20,35,50", help="comma-separated requested NFEs")
    p.add_argument("--num_samples", type=int, default=500)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--data_path", default=None, help="MNIST IDX dir of the test images (default: the run's)")
    p.add_argument("--out", default=None, help="output directory (default <workdir>/sampler_fid)")
    p.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    args = p.parse_args(argv)
    args.rows = [r for r in args.rows.split(",") if r.strip()]
    args.nfe = [int(n) for n in args.nfe.split(",")]
    if args.num_samples < 10:
        p.error(f"--num_samples must be >= 10 (FID needs a covariance), got {args.num_samples}")
    if min(args.nfe) < 1:
        p.error(f"--nfe values must be >= 1, got {args.nfe}")
    return args


def main(argv=None) -> dict:
    args = parse_args(argv)
    out_dir = args.out or os.path.join(args.workdir, "sampler_fid")
    os.makedirs(out_dir, exist_ok=True)
    summary = sampler_fid(args.workdir, args.classifier, args.rows, args.nfe, num_samples=args.num_samples,
                          seed=args.seed, data_path=args.data_path,
                          log=(lambda *_: None) if args.json else lambda s: print(s, flush=True))  # fmt: skip
    with open(os.path.join(out_dir, "sampler_fid.json"), "w") as f:
        json.dump(summary, f, indent=2)
    print(json.dumps(summary) if args.json else table(summary["results"], args.nfe))
    return summary


if __name__ == "__main__":
    main()
