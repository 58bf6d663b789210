r"""Class-conditional MNIST with classifier-free guidance at w in {0, 1, 3}.

    python experiments/mnist_small.py --workdir=runs/mnist_cond --num_steps=2000   # class-conditional, p_uncond=0.1
    python experiments/train_classifier.py --workdir=runs/mnist_classifier
    python experiments/cfg_mnist.py --workdir=runs/mnist_cond --classifier=runs/mnist_classifier/classifier.msgpack

Guidance (Ho & Salimans 2022, eq. 6): eps~ = (1 + w) eps(x, t, y) - w eps(x, t, null), one batched
network call per step (`diffax.guidance.classifier_free`), sampled with DDIM (eta = 0,
``--steps`` steps). For every w: ``--per_class`` samples of each digit 0..9, the accuracy of the
independent MNIST classifier (experiments/train_classifier.py) on them (does a sample show its
class?), and their classifier FID against the test set (diversity/fidelity: guidance usually trades
FID for accuracy). Same noise for every w, so the grids differ only by the guidance.

Outputs in ``--out`` (default <workdir>/cfg/): cfg_mnist.png (one panel per w, one row per class),
cfg_mnist.json, and a table on stdout (``--json``: one JSON object).
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
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--workdir", default="runs/mnist_cond")
    p.add_argument("--classifier", default="runs/mnist_classifier/classifier.msgpack")
    p.add_argument("--data_path", default=os.path.join(os.path.dirname(REPO), "shared", "data", "mnist"))
    p.add_argument("--ws", default="0,1,3", help="comma-separated guidance weights w")
    p.add_argument("--per_class", type=int, default=20)
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None)
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    args.ws = [float(w) for w in args.ws.split(",")]
    return args


def main(argv=None) -> dict:
    args = parse_args(argv)
    from diffax import data, guidance, samplers
    from diffax.training import image_eval, plots

    sys.path.insert(0, os.path.join(REPO, "experiments"))
    from ddim_steps import load_mnist_small

    out_dir = args.out or os.path.join(args.workdir, "cfg")
    os.makedirs(out_dir, exist_ok=True)
    config, model, schedule, data_shape, params, ckpt_step = load_mnist_small(args.workdir, args.data_path)
    k = config.model.num_classes
    if k is None:
        raise ValueError(f"{args.workdir} holds an unconditional model (model.num_classes=None); CFG needs a "
                         "class-conditional one trained with p_uncond > 0 (mnist_small.py --conditional)")
    test_images, _ = data.load_array("mnist_local", split="test", path=args.data_path)
    reference = image_eval.classifier_reference(args.classifier, test_images)  # test-set features, once
    y = jnp.repeat(jnp.arange(k, dtype=jnp.int32), args.per_class)  # class-major: row c = digit c
    n = int(y.shape[0])

    def eps_fn(x_t, t, labels):
        return model.apply({"params": params}, x_t, t, y=labels, train=False)

    @jax.jit
    def sample(w, key):
        model_fn = guidance.classifier_free(eps_fn, y, w=w, null_label=k)
        return samplers.ddim(model_fn, schedule, key, (n,) + tuple(data_shape), num_steps=args.steps, eta=0.0,
                             clip_x0=1.0)  # fmt: skip

    key = jax.random.PRNGKey(args.seed)
    t0 = time.perf_counter()
    compiled = sample.lower(jnp.float32(0.0), key).compile()  # w traced: one program for every w
    t_compile = time.perf_counter() - t0
    results, panels = [], []
    for w in args.ws:
        t0 = time.perf_counter()
        x = np.asarray(jax.device_get(compiled(jnp.float32(w), key)))
        t_run = time.perf_counter() - t0
        m = image_eval.reference_metrics(x, reference, sample_labels=np.asarray(y))
        per_class = _per_class_accuracy(x, np.asarray(y), reference)
        results.append(dict(w=w, accuracy=m["sample_accuracy"], classifier_fid=m["classifier_fid"],
                            per_class_accuracy=per_class, sample_s=t_run, num_samples=n))  # fmt: skip
        panels.append(x.reshape(k, args.per_class, *x.shape[1:])[:, :10].reshape(-1, *x.shape[1:]))
        if not args.json:
            print(f"w={w:g}: accuracy {m['sample_accuracy']:.3f}  classifier FID {m['classifier_fid']:.3f}  "
                  f"({t_run:.1f} s)", flush=True)  # fmt: skip
    summary = dict(checkpoint_step=ckpt_step, steps=args.steps, per_class=args.per_class, compile_s=t_compile,
                   results=results)  # fmt: skip
    with open(os.path.join(out_dir, "cfg_mnist.json"), "w") as f:
        json.dump(summary, f, indent=2)
    _figure(os.path.join(out_dir, "cfg_mnist.png"), panels, results, plots)
    if args.json:
        print(json.dumps(summary))
    else:
        print("| w | classifier accuracy | classifier FID |\n|---|---|---|")
        for r in results:
            print(f"| {r['w']:g} | {100 * r['accuracy']:.1f}% | {r['classifier_fid']:.2f} |")
    return summary


def _per_class_accuracy(x, y, reference) -> list[float]:
    from diffax import feature_fid

    logits, _ = feature_fid.classifier_outputs(np.clip(x, -1, 1), model=reference.model, params=reference.params)
    hit = np.argmax(logits, axis=1) == y
    return [float(np.mean(hit[y == c])) for c in np.unique(y)]


def _figure(path, panels, results, plots) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(panels), figsize=(3.2 * len(panels), 3.6))
    for ax, x, r in zip(np.atleast_1d(axes), panels, results):
        img = plots.image_grid(x, ncols=10)
        ax.imshow(img[..., 0], cmap="gray")
        ax.set_title(f"w = {r['w']:g}: acc {100 * r['accuracy']:.1f}%, FID {r['classifier_fid']:.2f}", fontsize=8)
        ax.set_xticks([])
        h = img.shape[0] / 10
        ax.set_yticks([h * (i + 0.5) for i in range(10)])
        ax.set_yticklabels([str(i) for i in range(10)], fontsize=7)
    fig.suptitle("classifier-free guidance, one row per class (same noise for every w)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=150)
    plt.close(fig)


if __name__ == "__main__":
    main()
