r"""Class-conditional MNIST with classifier-free guidance at w in {0, 1, 3}.

    python experiments/mnist_small.py --workdir=runs/mnist_cond --num_steps=2000   # class-conditional, p_uncond=0.1
    python experiments/train_classifier.py --workdir=runs/mnist_classifier
    python experiments/cfg_mnist.py --workdir=runs/mnist_cond --classifier=runs/mnist_classifier/classifier.msgpack

Guidance (Ho & Salimans 2022, eq. 6): eps~ = (1 + w) eps(x, t, y) - w eps(x, t, null), one batched
network call per step (`diffax.guidance.classifier_free`), sampled with DDIM (eta = 0,
``--steps`` steps). For every w: ``--per_class`` samples of each digit 0..9, the accuracy of the
independent MNIST classifier (experiments/train_classifier.py) on them (does a sample show its
class?), and their classifier FID against the test set (diversity/fidelity: guidance usually trades
FID for accuracy). Same noise for every w, so the grids differ only by the guidance. The run is
restored with its saved config (`diffax.training.restore.restore_ema`; EMA debiased for runs trained
without the EMA warm-up).

Outputs in ``--out`` (default <workdir>/cfg/): cfg_mnist.png (one panel per w, one row per class),
cfg_mnist.json, and a table on stdout (``--json``: one JSON object).
"""

from __future__ import annotations

import argparse
import json
import os
import time

import jax
import jax.numpy as jnp
import numpy as np

from diffax import data, guidance, samplers
from diffax.evaluation import classifier_features, images
from diffax.training import builders, plots, restore


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--workdir", default="runs/mnist_cond")
    p.add_argument("--classifier", default="runs/mnist_classifier/classifier.msgpack")
    p.add_argument("--data_path", default=None, help="MNIST IDX dir of the test images (default: the run's data.path)")
    p.add_argument("--ws", default="0,1,3", help="comma-separated guidance weights w")
    p.add_argument("--per_class", type=int, default=20)
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None)
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    args.ws = [float(w) for w in args.ws.split(",")]
    return args


def guided_sampler(exp: builders.Experiment, params, y: jax.Array, *, num_steps: int):
    """``sample(w, key)``: DDIM (eta = 0, clip_x0 = 1) samples for the labels ``y`` with classifier-free guidance
    of weight w (traced: one compiled program serves every w), null class K = exp.num_classes."""

    def eps_fn(x_t, t, labels):
        return exp.model.apply({"params": params}, x_t, t, y=labels, train=False)

    def sample(w, key):
        model_fn = guidance.classifier_free(eps_fn, y, w=w, null_label=exp.num_classes)
        return samplers.ddim(model_fn, exp.schedule, key, (y.shape[0],) + tuple(exp.data.shape), num_steps=num_steps,
                             eta=0.0, clip_x0=1.0)  # fmt: skip

    return sample


def main(argv=None) -> dict:
    args = parse_args(argv)
    out_dir = args.out or os.path.join(args.workdir, "cfg")
    os.makedirs(out_dir, exist_ok=True)
    # debias=None: a run trained without the EMA warm-up (older runs) still holds decay^n of the
    # initialisation; restore_ema removes it exactly.
    run = restore.restore_ema(args.workdir, debias=None)
    exp = run.experiment
    k = exp.num_classes
    if k is None:
        raise ValueError(f"{args.workdir} holds an unconditional model (model.num_classes=None); CFG needs a "
                         "class-conditional one trained with p_uncond > 0 (mnist_small.py --conditional)")
    test_images, _ = data.load_array("mnist_local", split="test", path=args.data_path or exp.data.path)
    reference = images.classifier_reference(args.classifier, test_images)  # test-set features, once
    y = jnp.repeat(jnp.arange(k, dtype=jnp.int32), args.per_class)  # class-major: row c = digit c
    n = int(y.shape[0])

    key = jax.random.PRNGKey(args.seed)
    t0 = time.perf_counter()
    sample = jax.jit(guided_sampler(exp, run.params, y, num_steps=args.steps))
    compiled = sample.lower(jnp.float32(0.0), key).compile()  # w traced: one program for every w
    t_compile = time.perf_counter() - t0
    results, panels = [], []
    for w in args.ws:
        t0 = time.perf_counter()
        x = np.asarray(jax.device_get(compiled(jnp.float32(w), key)))
        t_run = time.perf_counter() - t0
        m = images.reference_metrics(x, reference, sample_labels=np.asarray(y))
        per_class = _per_class_accuracy(x, np.asarray(y), reference)
        results.append(dict(w=w, accuracy=m["sample_accuracy"], classifier_fid=m["classifier_fid"],
                            per_class_accuracy=per_class, sample_s=t_run, num_samples=n))  # fmt: skip
        panels.append(x.reshape(k, args.per_class, *x.shape[1:])[:, :10].reshape(-1, *x.shape[1:]))
        if not args.json:
            print(f"w={w:g}: accuracy {m['sample_accuracy']:.3f}  classifier FID {m['classifier_fid']:.3f}  "
                  f"({t_run:.1f} s)", flush=True)  # fmt: skip
    summary = dict(checkpoint_step=run.step, steps=args.steps, per_class=args.per_class, compile_s=t_compile,
                   results=results)  # fmt: skip
    with open(os.path.join(out_dir, "cfg_mnist.json"), "w") as f:
        json.dump(summary, f, indent=2)
    plots.save_image_panels(
        os.path.join(out_dir, "cfg_mnist.png"), panels, ncols=min(10, args.per_class),
        titles=[f"w = {r['w']:g}: acc {100 * r['accuracy']:.1f}%, FID {r['classifier_fid']:.2f}" for r in results],
        row_labels=[str(c) for c in range(k)],
        title="classifier-free guidance, one row per class (same noise for every w)",
    )  # fmt: skip
    if args.json:
        print(json.dumps(summary))
    else:
        print("| w | classifier accuracy | classifier FID |\n|---|---|---|")
        for r in results:
            print(f"| {r['w']:g} | {100 * r['accuracy']:.1f}% | {r['classifier_fid']:.2f} |")
    return summary


def _per_class_accuracy(x: np.ndarray, y: np.ndarray, reference: images.ClassifierReference) -> list[float]:
    """The feature classifier's accuracy on the samples of each class (classes in increasing order)."""
    logits, _ = classifier_features.classifier_outputs(np.clip(x, -1, 1), model=reference.model,
                                                       params=reference.params)  # fmt: skip
    hit = np.argmax(logits, axis=1) == y
    return [float(np.mean(hit[y == c])) for c in np.unique(y)]


if __name__ == "__main__":
    main()
