"""The seed slides' 2-D score-matching example: learn s_theta(x) ~ grad log p(x), sample with Langevin.

A time-free MLP score network s_theta: R^2 -> R^2 (`diffax.models.MLP` called with t=None) is trained
on a 2-D toy with
  - exact score matching (Hyvarinen 2005):  E_p[ 1/2 ||s(x)||^2 + tr(grad_x s(x)) ]   (`losses.exact_score_matching`)
  - sliced score matching, variance reduced (Song et al. 2019):  E_p E_v[ v^T (grad s) v + 1/2 ||s||^2 ]
    (`losses.sliced_score_matching`), for comparison,
each with a plain optax Adam loop (one jitted step). Both are then sampled with unadjusted Langevin
dynamics (`samplers.langevin`) started from UNIFORM noise on a box around the data, next to Langevin
with the data's EXACT score (the mixture oracle), which separates the sampler's error from the
network's. For a mixture the learned score field is drawn beside the true one.

What to expect (the slides' point, which motivates NCSN's noise levels): the score is learned well
where the data is and poorly in the empty space between modes; Langevin without annealing then
mixes slowly between modes, so the samples' mode weights follow the basins of the initial noise
rather than the mixture weights, even with the exact score.

Measured (defaults: gmm2d, 3000 Adam steps, Langevin 2000 steps of eps = 2e-3 from U([-3, 3]^2),
2000 samples; ~2 CPU-minutes): relative score error 0.004 (exact SM) / 0.005 (sliced SM) on
held-out data but 0.38 / 0.35 on the uniform box; sliced W1 to held-out data 0.234 / 0.212 / 0.377
(exact score) vs 0.030 data-vs-data; mode weights ~(0.33, 0.35, 0.32) learned and
(0.40, 0.26, 0.35) exact vs the true (0.3, 0.5, 0.2): the distance is dominated by mode weights.

    python experiments/score_2d.py                       # ~2-4 minutes on 2 CPU cores
    python experiments/score_2d.py --quick --json        # a smoke run (seconds)

Writes samples.png, score_field.png, losses.png and metrics.json into --workdir (runs/score_2d);
prints the sliced 1-Wasserstein distance of each sampler's output to held-out data beside the
data-vs-data distance (a fresh draw of the same size), the mode weights and the relative score error
E||s_theta - grad log p||^2 / E||grad log p||^2 on held-out data.
"""

from __future__ import annotations

import argparse
import json
import os
import time

import jax
import jax.numpy as jnp
import matplotlib
import numpy as np
import optax

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from diffax import losses, samplers  # noqa: E402
from diffax.data import toys  # noqa: E402
from diffax.evaluation import metrics  # noqa: E402
from diffax.models.mlp import MLP  # noqa: E402

OBJECTIVES = ("exact", "sliced")


def make_loss(objective: str, apply_fn):
    """Per-batch mean score-matching loss of params on x (B, 2); `key` feeds the sliced projections."""

    def loss_fn(params, key, x):
        score_fn = lambda xx: apply_fn(params, xx)  # noqa: E731
        if objective == "exact":
            per_example = losses.exact_score_matching(score_fn, x)
        else:
            per_example = losses.sliced_score_matching(
                score_fn, key, x, num_projections=1, variance_reduction=True
            )
        return jnp.mean(per_example)

    return loss_fn


def train(objective: str, model: MLP, data: jax.Array, *, key, steps: int, batch_size: int, lr: float):
    """Adam (lr cosine-decayed to lr / 100) on the score-matching loss; minibatches drawn with replacement.

    Returns (params, per-step losses). The step key is fold_in(key, step) (no key in the state).
    """
    k_init, k_steps = jax.random.split(key)
    params = model.init(k_init, data[:1])
    tx = optax.adam(optax.cosine_decay_schedule(lr, steps, alpha=0.01))  # decay: less end-of-run noise
    opt_state = tx.init(params)
    loss_fn = make_loss(objective, model.apply)

    @jax.jit
    def step(params, opt_state, i):
        k_batch, k_loss = jax.random.split(jax.random.fold_in(k_steps, i))
        idx = jax.random.randint(k_batch, (batch_size,), 0, data.shape[0])
        loss, grads = jax.value_and_grad(loss_fn)(params, k_loss, data[idx])
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    history = []
    for i in range(steps):
        params, opt_state, loss = step(params, opt_state, i)
        history.append(loss)
        if i % 500 == 0 or i == steps - 1:
            value = float(loss)
            if not np.isfinite(value):
                raise FloatingPointError(f"{objective} score matching: loss is {value} at step {i}")
    return params, np.asarray(jax.device_get(history))


def langevin_from_uniform(score_fn, key, *, n: int, box: float, step_size: float, num_steps: int):
    """Langevin dynamics x <- x + eps s(x) + sqrt(2 eps) z from x_0 ~ U([-box, box]^2)."""
    k_init, k_run = jax.random.split(key)
    x_init = jax.random.uniform(k_init, (n, 2), minval=-box, maxval=box)
    return samplers.langevin(score_fn, k_run, x_init, step_size=step_size, num_steps=num_steps)


def _quiver(ax, score_fn, box: float, title: str, data: np.ndarray):
    g = np.linspace(-box, box, 21)
    xx, yy = np.meshgrid(g, g)
    pts = jnp.asarray(np.stack([xx.ravel(), yy.ravel()], -1), dtype=jnp.float32)
    s = np.asarray(score_fn(pts))
    norm = np.linalg.norm(s, axis=1, keepdims=True)
    s_dir = s / np.maximum(norm, 1e-8)  # directions; length by log-norm so all arrows are visible
    length = np.log1p(norm)
    ax.scatter(data[:, 0], data[:, 1], s=1, c="0.75")
    ax.quiver(xx.ravel(), yy.ravel(), (s_dir * length)[:, 0], (s_dir * length)[:, 1], norm.ravel(),
              cmap="viridis", angles="xy")  # fmt: skip
    ax.set_title(title, fontsize=9)
    _set_box(ax, box)


TITLES = {"exact": "exact score matching", "sliced": "sliced score matching (VR)", "true": "exact score (oracle)"}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", default="runs/score_2d")
    parser.add_argument("--data", default="gmm2d", choices=toys.TOY_DATASETS)
    parser.add_argument("--num_train", type=int, default=20000)
    parser.add_argument("--steps", type=int, default=3000)
    parser.add_argument("--batch_size", type=int, default=256)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--hidden", type=int, default=128)
    parser.add_argument("--num_layers", type=int, default=3)
    parser.add_argument("--num_samples", type=int, default=2000)
    parser.add_argument("--langevin_steps", type=int, default=2000)
    parser.add_argument("--step_size", type=float, default=2e-3)
    parser.add_argument("--box", type=float, default=3.0, help="uniform init and plots on [-box, box]^2")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true", help="shrink everything for a smoke run")
    parser.add_argument("--json", action="store_true", help="print one JSON object of the metrics")
    args = parser.parse_args(argv)
    if toys.toy_dim(args.data) != 2:
        raise ValueError(f"--data must be a 2-D toy, got {args.data!r} (D = {toys.toy_dim(args.data)})")
    if args.quick:
        args.steps, args.num_samples, args.langevin_steps = 200, 500, 300
    return args


def train_score_models(args, model: MLP, data: jax.Array, key: jax.Array) -> tuple[dict, dict, dict]:
    """Trains one score network per objective: (jitted score functions, loss histories, {objective: entry})
    with each entry's train_seconds and final_loss (mean of the last 100 steps)."""
    score_fns, histories, entries = {}, {}, {}
    for objective in OBJECTIVES:
        start = time.perf_counter()
        params, hist = train(objective, model, data, key=jax.random.fold_in(key, OBJECTIVES.index(objective)),
                             steps=args.steps, batch_size=args.batch_size, lr=args.lr)  # fmt: skip
        entries[objective] = {"train_seconds": round(time.perf_counter() - start, 1),
                              "final_loss": float(np.mean(hist[-100:]))}  # fmt: skip
        score_fns[objective] = jax.jit(lambda x, p=params: model.apply(p, x))
        histories[objective] = hist
    return score_fns, histories, entries


def score_errors(score_fn, true_score, heldout: jax.Array, box_points: jax.Array) -> dict:
    """Relative score error E||s - grad log p||^2 / E||grad log p||^2 on held-out data and on the uniform box,
    and the exact-SM loss at the true score, -1/2 E||grad log p||^2 (Hyvarinen 2005): the loss's floor."""
    out = {}
    for where, pts in (("", heldout), ("_uniform_box", box_points)):
        err = score_fn(pts) - true_score(pts)
        out["relative_score_error" + where] = float(jnp.sum(err**2) / jnp.sum(true_score(pts) ** 2))
    out["loss_at_true_score"] = float(jnp.mean(losses.exact_score_matching(true_score, heldout)))
    return out


def sample_and_score(score_fns: dict, args, key: jax.Array, heldout: jax.Array, sliced_w1, mix) -> tuple[dict, dict]:
    """Langevin samples of every score function from the same uniform noise: ({name: samples},
    {name: entry}) with each entry's langevin_seconds, sliced W1 to held-out data and mode weights (mixtures)."""
    samples, entries = {}, {}
    for name, fn in score_fns.items():
        start = time.perf_counter()
        x = langevin_from_uniform(fn, key, n=args.num_samples, box=args.box, step_size=args.step_size,
                                  num_steps=args.langevin_steps)  # fmt: skip
        x = jax.block_until_ready(x)
        samples[name] = np.asarray(x)
        entry = {"langevin_seconds": round(time.perf_counter() - start, 1),
                 "sliced_w1_samples_vs_heldout": float(sliced_w1(x, heldout))}  # fmt: skip
        if mix is not None:
            entry["mode_weights"] = [round(float(w), 4) for w in metrics.mode_weights(x, mix.means)]
        entries[name] = entry
    return samples, entries


def _set_box(ax, box: float) -> None:
    ax.set_aspect("equal")
    ax.set_xlim(-box, box)
    ax.set_ylim(-box, box)


def plot_samples(path: str, samples: dict, heldout: np.ndarray, results: dict, args) -> None:
    """One scatter per sampler: its Langevin samples over the held-out data, with their sliced W1."""
    fig, axes = plt.subplots(1, len(samples), figsize=(4.2 * len(samples), 4.2))
    for ax, name in zip(np.atleast_1d(axes), samples):
        ax.scatter(heldout[:, 0], heldout[:, 1], s=2, c="0.7", label="data")
        ax.scatter(samples[name][:, 0], samples[name][:, 1], s=2, c="tab:red", alpha=0.6, label="Langevin")
        ax.set_title(f"{TITLES[name]}\nSW1 = {results[name]['sliced_w1_samples_vs_heldout']:.3f} "
                     f"(data: {results['sliced_w1_data_vs_heldout']:.3f})", fontsize=9)  # fmt: skip
        _set_box(ax, args.box)
    np.atleast_1d(axes)[0].legend(fontsize=7, loc="upper left")
    fig.suptitle(f"Langevin ({args.langevin_steps} steps, eps = {args.step_size}) from uniform noise, {args.data}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_score_fields(path: str, score_fns: dict, heldout: np.ndarray, box: float) -> None:
    """One quiver plot per score function on a 21 x 21 grid of [-box, box]^2."""
    fig, axes = plt.subplots(1, len(score_fns), figsize=(4.2 * len(score_fns), 4.2))
    for ax, name in zip(np.atleast_1d(axes), score_fns):
        _quiver(ax, score_fns[name], box, f"{TITLES[name]}: s(x)", heldout)
    fig.suptitle("score fields (arrow length log(1 + |s|), colour |s|)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_losses(path: str, histories: dict, loss_floor: float | None) -> None:
    """50-step running means of the training losses, with the exact-SM loss at the true score if known."""
    fig, ax = plt.subplots(figsize=(5, 3.5))
    for objective, hist in histories.items():
        smooth = np.convolve(hist, np.ones(50) / 50, mode="valid")
        ax.plot(np.arange(len(smooth)) + 50, smooth, label=objective)
    if loss_floor is not None:
        ax.axhline(loss_floor, color="k", ls="--", lw=1, label="exact SM at true score")
    ax.set_xlabel("step")
    ax.set_ylabel("loss (50-step mean)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def print_summary(results: dict, names: list[str], paths: dict) -> None:
    base = results["sliced_w1_data_vs_heldout"]
    print(f"data: {results['data']}; sliced W1 data vs held-out data: {base:.4f}")
    for name in names:
        r = results[name]
        extra = f", mode weights {r['mode_weights']}" if "mode_weights" in r else ""
        err = ""
        if "relative_score_error" in r:
            err = (f", relative score error {r['relative_score_error']:.3f} on data, "
                   f"{r['relative_score_error_uniform_box']:.3f} on the box")  # fmt: skip
        print(f"  {name:7s} sliced W1 samples vs held-out: {r['sliced_w1_samples_vs_heldout']:.4f}{err}{extra}")
    if "true_mode_weights" in results:
        print(f"  true mode weights {results['true_mode_weights']}")
    print("figures:", ", ".join(paths.values()))


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    os.makedirs(args.workdir, exist_ok=True)
    data_np, _ = toys.toy(args.data, args.num_train, seed=args.seed)
    heldout_np, _ = toys.toy(args.data, args.num_samples, seed=args.seed + 1)
    baseline_np, _ = toys.toy(args.data, args.num_samples, seed=args.seed + 2)
    heldout = jnp.asarray(heldout_np)
    mix = toys.toy_mixture(args.data)  # None for non-mixture toys
    true_score = None if mix is None else (lambda x: mix.score_sigma(x, 0.0))

    k_train, k_sample, k_sw = jax.random.split(jax.random.key(args.seed), 3)
    sliced_w1 = jax.jit(lambda a, b: metrics.sliced_wasserstein(a, b, key=k_sw, num_projections=256))
    results: dict = {"data": args.data, "train_steps": args.steps, "langevin_steps": args.langevin_steps,
                     "step_size": args.step_size, "num_samples": args.num_samples,
                     "sliced_w1_data_vs_heldout": float(sliced_w1(jnp.asarray(baseline_np), heldout))}  # fmt: skip
    if mix is not None:
        results["true_mode_weights"] = [round(float(w), 4) for w in mix.weights]

    model = MLP(hidden=args.hidden, num_layers=args.num_layers, out_dim=2)
    score_fns, histories, train_entries = train_score_models(args, model, jnp.asarray(data_np), k_train)
    results.update(train_entries)
    if true_score is not None:
        # Off the data: uniform points on the sampler's initial box, where the score is learned poorly.
        box_points = jax.random.uniform(jax.random.fold_in(k_sw, 1), (args.num_samples, 2), minval=-args.box,
                                        maxval=args.box)  # fmt: skip
        for objective in OBJECTIVES:
            results[objective].update(score_errors(score_fns[objective], true_score, heldout, box_points))
        score_fns["true"] = jax.jit(true_score)

    samples, sample_entries = sample_and_score(score_fns, args, k_sample, heldout, sliced_w1, mix)
    for name, entry in sample_entries.items():
        results.setdefault(name, {}).update(entry)

    paths = {name: os.path.join(args.workdir, f"{name}.png") for name in ("samples", "score_field", "losses")}
    plot_samples(paths["samples"], samples, heldout_np, results, args)
    plot_score_fields(paths["score_field"], score_fns, heldout_np, args.box)
    plot_losses(paths["losses"], histories, results.get("exact", {}).get("loss_at_true_score"))
    results["figures"] = paths
    with open(os.path.join(args.workdir, "metrics.json"), "w") as f:
        json.dump(results, f, indent=2)
    if args.json:
        print(json.dumps(results))
    else:
        print_summary(results, list(samples), paths)
    return results


if __name__ == "__main__":
    main()
