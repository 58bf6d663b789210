r"""Command line: train, sample and evaluate a diffusion model from a config file.

    python -m diffax.main --config=configs/default.py --workdir=/tmp/diffax_default \
        --mode=train,sample,eval [--config.training.num_steps=2000 ...]

Flags:
  --config    a Python file with ``get_config()`` returning a locked ``ml_collections.ConfigDict``
              (``configs/*.py``); override any field with ``--config.<key>=<value>`` (an unknown key is
              an error). Default: ``configs/default.py`` of this repository.
  --workdir   where checkpoints, logs, samples and eval.json go (created if missing).
  --mode      'train' (resumes from the workdir), 'sample', 'eval', or a comma list run in order,
              e.g. 'train,sample,eval'.
  --coordinator_address / --num_processes / --process_id   multi-host start-up
              (`diffax.training.distributed.initialize`; also read from DIFFAX_* env vars, SLURM, TPU).

All logic lives in `diffax.training.loop` (testable); this file only parses flags.
"""

from __future__ import annotations

import os
import sys

from absl import app, flags, logging
from ml_collections import config_flags

MODES = ("train", "sample", "eval")
_DEFAULT_CONFIG = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs", "default.py")

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", _DEFAULT_CONFIG, "Path to a config file (configs/*.py).", lock_config=True)
flags.DEFINE_string("workdir", None, "Directory for checkpoints, logs, samples and eval.json.")
flags.DEFINE_string("mode", "train", f"One of {MODES} or a comma-separated list of them, run in order.")
flags.DEFINE_string("coordinator_address", None, "Multi-host: host:port of process 0.")
flags.DEFINE_integer("num_processes", None, "Multi-host: number of processes.")
flags.DEFINE_integer("process_id", None, "Multi-host: this process's index.")


def parse_modes(mode: str) -> list[str]:
    """'train,sample' -> ['train', 'sample']; raises ValueError on an empty or unknown mode."""
    modes = [m.strip() for m in str(mode).split(",") if m.strip()]
    bad = [m for m in modes if m not in MODES]
    if not modes or bad:
        raise ValueError(f"--mode must be one of {list(MODES)} or a comma list of them, got {mode!r}")
    return modes


def check_workdir(workdir: str | None) -> str:
    """The absolute workdir; raises ValueError if missing or if it names an existing non-directory."""
    if not workdir:
        raise ValueError("--workdir is required (a directory for checkpoints, logs and samples)")
    workdir = os.path.abspath(os.path.expanduser(workdir))
    if os.path.exists(workdir) and not os.path.isdir(workdir):
        raise ValueError(f"--workdir={workdir} exists and is not a directory")
    return workdir


def run(config, workdir: str, modes: list[str]) -> dict:
    """Runs the modes in order; returns {'samples': ..., 'eval': ...} for those that ran."""
    from diffax.training import loop  # heavy imports after flag parsing

    out: dict = {}
    for mode in modes:
        if mode == "train":
            loop.train_and_evaluate(config, workdir)
        elif mode == "sample":
            out["samples"] = loop.sample(config, workdir)
        else:
            out["eval"] = loop.evaluate(config, workdir, samples=out.get("samples"))
    return out


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    try:
        modes = parse_modes(FLAGS.mode)
        workdir = check_workdir(FLAGS.workdir)
    except ValueError as e:
        raise app.UsageError(str(e)) from None
    if not FLAGS["verbosity"].present:
        logging.set_verbosity(logging.WARNING)  # Orbax logs every save at INFO; --verbosity=0 shows them
    from diffax.training import distributed

    distributed.initialize(FLAGS.coordinator_address, FLAGS.num_processes, FLAGS.process_id)
    import jax

    if jax.process_index() == 0:
        print(f"diffax: modes {modes}, workdir {workdir}, {jax.process_count()} process(es), "
              f"{jax.device_count()} device(s) [{jax.default_backend()}]", flush=True)  # fmt: skip
    try:
        result = run(FLAGS.config, workdir, modes)
    except (FileNotFoundError, FloatingPointError, ValueError) as e:  # clear one-line errors, no traceback
        sys.exit(f"diffax: error: {type(e).__name__}: {e}")
    if "eval" in result and jax.process_index() == 0:
        print("eval:", {k: v for k, v in result["eval"].items() if not isinstance(v, list)}, flush=True)


if __name__ == "__main__":
    flags.mark_flags_as_required(["workdir"])
    app.run(main)
