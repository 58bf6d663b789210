"""The seed experiment with the oracle: a 1-D Gaussian mixture diffused and sampled back.

Data: 800 points from 0.5 N(-2, 0.5^2) + 0.5 N(2, 0.5^2). Forward: q(x_t | x_0) with the linear
schedule, T = 1000 (Ho et al. 2020), shown as histograms of x_t at several t converging to N(0, 1).
Reverse: DDPM-1000 (ancestral) and DDIM-50 (eta = 0) driven by the mixture's EXACT eps
(`diffax.oracles`), so what is measured is the sampler, not a network.

    python experiments/gmm1d.py --workdir=runs/gmm1d_oracle        # < 1 minute on 2 CPU cores

Writes forward.png, samples.png and metrics.json into --workdir; prints the 1-Wasserstein
distances to the 800 data points beside the data-vs-data baseline (a fresh 800-point draw).
"""

from __future__ import annotations

import argparse
import json
import os
import time

import jax
import jax.numpy as jnp
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from diffax import diffusion, oracles, samplers, schedules  # noqa: E402
from diffax.evaluation import metrics  # noqa: E402


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", default="runs/gmm1d_oracle")
    parser.add_argument("--num_points", type=int, default=800)
    parser.add_argument("--num_samples", type=int, default=800)
    parser.add_argument("--ddim_steps", type=int, default=50)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    os.makedirs(args.workdir, exist_ok=True)

    s = schedules.linear(1000)
    mix = oracles.seed_mixture_1d(s)
    k_data, k_ref, k_fwd, k_ddpm, k_ddim = jax.random.split(jax.random.key(args.seed), 5)
    x0 = mix.sample(k_data, args.num_points)

    # Forward process: x_t for several t, all from the same data points.
    ts = [0, 50, 100, 250, 500, 999]
    noise = jax.random.normal(k_fwd, (len(ts),) + x0.shape)
    xts = [diffusion.q_sample(s, x0, jnp.full((x0.shape[0],), t), noise[i]) for i, t in enumerate(ts)]

    fig, axes = plt.subplots(1, len(ts), figsize=(3 * len(ts), 2.6), sharey=False)
    grid = np.linspace(-4.5, 4.5, 400)
    for ax, t, xt in zip(axes, ts, xts):
        ax.hist(np.asarray(xt[:, 0]), bins=50, density=True, color="tab:blue", alpha=0.6)
        dens = np.exp(np.asarray(mix.log_prob_t(jnp.asarray(grid)[:, None], jnp.full((400,), t))))
        ax.plot(grid, dens, "k-", lw=1, label="exact q(x_t)")
        ax.plot(grid, np.exp(-grid**2 / 2) / np.sqrt(2 * np.pi), "r--", lw=1, label="N(0, 1)")
        ax.set_title(f"t = {t}  (abar = {float(s.alphas_cumprod[t]):.3g})", fontsize=9)
    axes[0].legend(fontsize=7)
    fig.suptitle("Forward process q(x_t | x_0) on the 1-D mixture (linear, T = 1000)")
    fig.tight_layout()
    fig.savefig(os.path.join(args.workdir, "forward.png"), dpi=110)
    plt.close(fig)

    # Reverse process with the exact eps.
    shape = (args.num_samples, 1)
    run_ddpm = jax.jit(lambda k: samplers.ddpm(mix.eps, s, k, shape))
    run_ddim = jax.jit(lambda k: samplers.ddim(mix.eps, s, k, shape, num_steps=args.ddim_steps, eta=0.0))
    results = {}
    samples = {}
    for name, fn, key in (("ddpm_1000", run_ddpm, k_ddpm), (f"ddim_{args.ddim_steps}", run_ddim, k_ddim)):
        start = time.perf_counter()
        x = jax.block_until_ready(fn(key))
        elapsed = time.perf_counter() - start
        samples[name] = np.asarray(x[:, 0])
        results[name] = dict(
            w1_to_data=float(metrics.wasserstein_1d(samples[name], np.asarray(x0[:, 0]))),
            mode_weights=[float(w) for w in metrics.mode_weights(np.asarray(x), np.asarray(mix.means))],
            seconds_including_compile=round(elapsed, 3),
        )
    ref = np.asarray(mix.sample(k_ref, args.num_points)[:, 0])
    results["data_vs_data_w1"] = float(metrics.wasserstein_1d(ref, np.asarray(x0[:, 0])))

    fig, ax = plt.subplots(figsize=(6, 3.5))
    dens = np.exp(np.asarray(mix.log_prob(jnp.asarray(grid)[:, None])))
    ax.plot(grid, dens, "k-", lw=1.5, label="true mixture")
    ax.hist(np.asarray(x0[:, 0]), bins=60, density=True, histtype="step", color="gray", label="data (800)")
    for name, color in zip(samples, ("tab:blue", "tab:orange")):
        ax.hist(samples[name], bins=60, density=True, alpha=0.45, color=color,
                label=f"{name}: W1 = {results[name]['w1_to_data']:.3f}")
    ax.set_title(f"Samples with the exact eps (data-vs-data W1 = {results['data_vs_data_w1']:.3f})", fontsize=10)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(os.path.join(args.workdir, "samples.png"), dpi=110)
    plt.close(fig)

    with open(os.path.join(args.workdir, "metrics.json"), "w") as f:
        json.dump(results, f, indent=2)
    print(f"{'sampler':<12} {'W1 to data':>10} {'mode weights':>16} {'seconds':>8}")
    for name in samples:
        r = results[name]
        mw = "/".join(f"{w:.3f}" for w in r["mode_weights"])
        print(f"{name:<12} {r['w1_to_data']:>10.4f} {mw:>16} {r['seconds_including_compile']:>8.2f}")
    print(f"{'data-vs-data':<12} {results['data_vs_data_w1']:>10.4f}")
    print(f"wrote forward.png, samples.png, metrics.json to {args.workdir}")
    return results


if __name__ == "__main__":
    main()
