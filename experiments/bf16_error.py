r"""How much of the noise eps a bf16 U-Net loses at small t, against the same network in float32.

    python experiments/bf16_error.py              # table; --json for one JSON object
    python experiments/bf16_error.py --steps=400 --data_path=../shared/data/mnist

x_t = a_t x0 + b_t eps (DDPM's linear schedule, T = 1000: b_0 = 0.01, b_10 = 0.047) with x0 MNIST test
images in [-1, 1]. Two measures per t:

- input rounding: RMS(bf16(x_t) - x_t) / RMS(b_t eps), the share of the eps component that rounding x_t to
  bf16 destroys before any layer sees it (model-independent; what a U-Net that casts x_t to bf16 loses).
- eps error: RMS(eps_bf16 - eps_f32) / RMS(eps_f32), the bf16 U-Net (``dtype='bfloat16'``) against the
  float32 U-Net with the same parameters, on the same x_t. Random weights do not separate eps from the image,
  so the parameters are trained here first: a small U-Net (ch 32, ch_mult (1, 2), one res block, no attention)
  for ``--steps`` Adam steps in float32 on L_simple with t uniform in [0, ``--t_max``] (the small-t regime this
  measures). eps_f32's own error against the true eps is printed for scale.

Both models are compiled with XLA's ``xla_allow_excess_precision`` off: every bf16 value is rounded, as on a
GPU/TPU. (XLA's CPU backend emulates bf16 in float32 and by default may drop the f32 -> bf16 -> f32 round trips
it inserts, which hides the rounding this script measures.)

The numbers depend on the code the `diffax` import finds: run it at two commits to compare them. Measured
(defaults, 8.5 min on a loaded 2-core CPU; before = the same command at commit 492ac26, whose bf16 U-Net cast
x_t to bf16 before conv_in and ran its output head in bf16; the float32 model is bitwise the same in both):

    t    b_t     input rounding   eps err bf16/f32 before -> after   eps err f32/true
    0    0.0100  16.8%            18.7% -> 8.0%                      53%
    1    0.0148  11.3%            12.9% -> 5.5%                      49%
    10   0.0468   3.6%             4.3% -> 1.9%                      39%
    100  0.3238   0.5%             0.7% -> 0.4%                      28%

What remains after the fix is the bf16 body of the network (its activations carry the noise part of x_t
with 8 significant bits).
"""

from __future__ import annotations

import argparse
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax

import diffax
from diffax import schedules
from diffax.data.sources import load_idx_split
from diffax.models import UNet

MNIST = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "shared", "data", "mnist")


def _model(dtype: str) -> UNet:
    return UNet(ch=32, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(), dropout=0.0, num_groups=8, dtype=dtype)


def _rms(a) -> float:
    return float(np.sqrt(np.mean(np.square(np.asarray(a, np.float64)))))


def _noisy(x0: jax.Array, eps: jax.Array, t: jax.Array, acp: jax.Array) -> jax.Array:
    """x_t = sqrt(alpha-bar_t) x0 + sqrt(1 - alpha-bar_t) eps (Ho et al. 2020, eq. 4)."""
    a = jnp.sqrt(acp[t])[:, None, None, None]
    return a * x0 + jnp.sqrt(1.0 - acp[t])[:, None, None, None] * eps


def train(x_train: np.ndarray, acp: jax.Array, *, steps: int, t_max: int, batch: int, seed: int) -> dict:
    """Float32 U-Net trained on L_simple = ||eps - eps_theta(x_t, t)||^2 with t ~ U{0..t_max}, Adam 1e-3."""
    model = _model("float32")
    key = jax.random.PRNGKey(seed)
    params = jax.jit(model.init)(key, jnp.zeros((1, *x_train.shape[1:])), jnp.zeros(1, jnp.int32))["params"]
    tx = optax.adam(1e-3)
    opt = tx.init(params)

    @jax.jit
    def step(params, opt, x0, key):
        k_t, k_eps = jax.random.split(key)
        t = jax.random.randint(k_t, (x0.shape[0],), 0, t_max + 1)
        eps = jax.random.normal(k_eps, x0.shape)

        def loss(p):
            return jnp.mean(jnp.square(model.apply({"params": p}, _noisy(x0, eps, t, acp), t) - eps))

        value, grads = jax.value_and_grad(loss)(params)
        updates, opt = tx.update(grads, opt, params)
        return optax.apply_updates(params, updates), opt, value

    rng = np.random.default_rng(seed)
    for i in range(steps):
        x0 = jnp.asarray(x_train[rng.integers(0, len(x_train), batch)])
        params, opt, value = step(params, opt, x0, jax.random.fold_in(key, i))
    return {"params": params, "final_loss": float(value)}


def measure(params, x0: np.ndarray, acp: jax.Array, ts: list[int], seed: int) -> list[dict]:
    """Per t: input-rounding loss, bf16-vs-float32 eps error, float32 eps error vs the truth."""
    eps = jax.random.normal(jax.random.PRNGKey(seed + 1), x0.shape)
    t0 = jnp.zeros(x0.shape[0], jnp.int32)

    def compiled(model):
        options = {"xla_allow_excess_precision": False}
        return jax.jit(model.apply).lower({"params": params}, jnp.asarray(x0), t0).compile(compiler_options=options)

    apply32, apply16 = compiled(_model("float32")), compiled(_model("bfloat16"))
    rows = []
    for t_val in ts:
        t = jnp.full((x0.shape[0],), t_val, jnp.int32)
        x_t = _noisy(jnp.asarray(x0), eps, t, acp)
        b_eps = jnp.sqrt(1.0 - acp[t_val]) * eps
        e32 = apply32({"params": params}, x_t, t)
        e16 = apply16({"params": params}, x_t, t)
        rows.append({
            "t": t_val,
            "b_t": float(jnp.sqrt(1.0 - acp[t_val])),
            "input_rounding": _rms(x_t.astype(jnp.bfloat16).astype(jnp.float32) - x_t) / _rms(b_eps),
            "eps_err_bf16_vs_f32": _rms(e16 - e32) / _rms(e32),
            "eps_err_f32_vs_true": _rms(e32 - eps) / _rms(eps),
            "output_dtype": str(e16.dtype),
            "output_all_bf16_representable": bool(jnp.all(e16.astype(jnp.bfloat16).astype(e16.dtype) == e16)),
        })
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data_path", default=MNIST)
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--t_max", type=int, default=100)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--num_eval", type=int, default=64)
    parser.add_argument("--ts", default="0,1,10,100")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    acp = schedules.linear(1000).alphas_cumprod
    train_x, _ = load_idx_split(args.data_path, "train[:10000]")
    test_x, _ = load_idx_split(args.data_path, f"test[:{args.num_eval}]")
    scale = lambda a: (a.astype(np.float32) / 127.5 - 1.0)  # noqa: E731  uint8 -> [-1, 1]
    trained = train(scale(train_x), acp, steps=args.steps, t_max=args.t_max, batch=args.batch, seed=args.seed)
    rows = measure(trained["params"], scale(test_x), acp, [int(t) for t in args.ts.split(",")], args.seed)
    result = {"args": vars(args), "final_loss": trained["final_loss"], "rows": rows}
    if args.json:
        print(json.dumps(result))
        return
    print(f"diffax from {os.path.dirname(diffax.__file__)}; small MNIST U-Net, {args.steps} float32 steps at "
          f"t <= {args.t_max} (final loss {trained['final_loss']:.4f}), {args.num_eval} test images")
    print(f"{'t':>4} {'b_t':>7} {'input rounding':>15} {'eps err bf16/f32':>17} {'eps err f32/true':>17} "
          f"{'out bf16-repr.':>15}")
    for r in rows:
        print(f"{r['t']:>4} {r['b_t']:>7.4f} {r['input_rounding']:>15.2%} {r['eps_err_bf16_vs_f32']:>17.2%} "
              f"{r['eps_err_f32_vs_true']:>17.2%} {str(r['output_all_bf16_representable']):>15}")


if __name__ == "__main__":
    main()
