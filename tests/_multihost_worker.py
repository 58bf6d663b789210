"""Worker for tests/test_device_mesh.py: runs train steps in a FRESH process (JAX reads XLA_FLAGS and
the distributed settings at start-up) and saves the resulting parameters and metrics to an .npz.

  --mode devices    one process with N host devices (XLA_FLAGS=--xla_force_host_platform_device_count=N):
                    STEPS steps on a 1-device mesh and on an N-device mesh from the same state and
                    global batch; also records shard_batch's error for a batch not divisible by N.
  --mode multihost  process `process_id` of `num_processes` (jax.distributed over 127.0.0.1, gloo CPU
                    collectives), each feeding its half of the SAME global batch; the settings come
                    from the flags or, without them, from DIFFAX_COORDINATOR_ADDRESS etc.
Both modes build the same tiny problem from fixed seeds (`setup`), so their outputs are comparable.
"""

from __future__ import annotations

import argparse
import sys

GLOBAL_BATCH = 8
STEPS = 2
NUM_CLASSES = 3


def setup():
    """(state, train_step, global_batch) of a tiny class-conditional MLP on 2-D data, from fixed seeds."""
    import jax
    import numpy as np

    from diffax import schedules
    from diffax.models import MLP
    from diffax.training import create_train_state, diffusion_loss_fn, make_optimizer, make_train_step

    model = MLP(hidden=16, num_layers=1, num_classes=NUM_CLASSES, time_embed_dim=8)
    schedule = schedules.linear(100)
    rng = np.random.default_rng(0)
    batch = {
        "x": rng.normal(size=(GLOBAL_BATCH, 2)).astype(np.float32),
        "y": rng.integers(0, NUM_CLASSES, size=(GLOBAL_BATCH,)).astype(np.int32),
    }
    init = jax.jit(model.init)  # one program instead of one eagerly compiled op per init step
    params = init(jax.random.PRNGKey(1), batch["x"], np.zeros(GLOBAL_BATCH, np.int32), batch["y"])["params"]
    tx = make_optimizer(lr=1e-3, warmup_steps=0)
    loss_fn = diffusion_loss_fn(model.apply, schedule, p_uncond=0.25, num_classes=NUM_CLASSES)
    train_step = make_train_step(loss_fn, tx, ema_decay=0.9)
    state = create_train_state(params=params, tx=tx, rng=jax.random.PRNGKey(2))
    return state, train_step, batch


def run(mesh, local_batch, steps=STEPS):
    """`steps` jitted steps on `mesh`; returns (state, list of metrics) as process-local numpy."""
    import jax
    import numpy as np

    from diffax.device_mesh import replicate, shard_batch
    from diffax.training import jit_train_step

    state, train_step, _ = setup()
    state = replicate(state, mesh)
    step_fn = jit_train_step(train_step, mesh)
    history = []
    for _ in range(steps):
        state, metrics = step_fn(state, shard_batch(local_batch, mesh))
        history.append(metrics)
    local = lambda a: np.asarray(a.addressable_data(0))  # noqa: E731  (replicated: any shard is the whole)
    return jax.tree.map(local, state), jax.tree.map(local, history)


def flat(prefix, tree):
    import jax

    return {prefix + jax.tree_util.keystr(path): v for path, v in jax.tree_util.tree_leaves_with_path(tree)}


def main(argv):
    p = argparse.ArgumentParser()
    p.add_argument("--mode", choices=["devices", "multihost"], required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--coordinator")
    p.add_argument("--num_processes", type=int)
    p.add_argument("--process_id", type=int)
    args = p.parse_args(argv)

    import numpy as np

    if args.mode == "multihost":
        from diffax.training import distributed

        # flags if given, else the DIFFAX_* environment variables (the test uses one of each)
        assert distributed.initialize(args.coordinator, args.num_processes, args.process_id)
    import jax

    from diffax.device_mesh import make_mesh, shard_batch

    _, _, batch = setup()
    out = {}
    if args.mode == "devices":
        for name, devices in [("one", jax.devices()[:1]), ("all", jax.devices())]:
            state, history = run(make_mesh(devices), batch)
            out.update(flat(f"{name}/state", state))
            out.update(flat(f"{name}/metrics", history))
        out.update(flat("init/params", jax.device_get(setup()[0].params)))
        odd = {k: v[:6] for k, v in batch.items()}
        try:
            shard_batch(odd, make_mesh())
            out["error"] = np.array("no error")
        except ValueError as e:
            out["error"] = np.array(str(e))
        out["num_devices"] = np.array(len(jax.devices()))
    else:
        n, i = jax.process_count(), jax.process_index()
        b = GLOBAL_BATCH // n
        local = {k: v[i * b : (i + 1) * b] for k, v in batch.items()}
        state, history = run(make_mesh(), local)
        out.update(flat("multi/state", state))
        out.update(flat("multi/metrics", history))
        out["num_devices"] = np.array(len(jax.devices()))
        out["process_count"] = np.array(n)
    np.savez(args.out, **out)
    if args.mode == "multihost":
        jax.distributed.shutdown()


if __name__ == "__main__":
    main(sys.argv[1:])
