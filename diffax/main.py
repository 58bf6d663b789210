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

  --verbose   on an error, print the full traceback (default: one line naming the problem).

The config is turned into objects once (`diffax.training.builders.build`); the modes run in
`diffax.training.train` and `diffax.training.evaluate` (testable); this file only parses flags and
turns expected failures into one readable line.
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
flags.DEFINE_bool("verbose", False, "On an error, print the full traceback instead of one line.")


# Failures that mean "a bad input or a fault outside the code": reported as one line.
EXPECTED_ERRORS = (ValueError, FloatingPointError, OSError, MemoryError)


def fail(message: str) -> None:
    """Prints ``message`` as the LAST line on stderr and exits with status 1 at once (no interpreter
    shutdown, whose background-thread noise would bury it; checkpoints are closed before this)."""
    sys.stdout.flush()
    print(message, file=sys.stderr, flush=True)
    os._exit(1)


def _one_line(e: BaseException) -> str:
    """``Type: message`` of the config file's own error (not absl's wrapper around it), on one line."""
    while isinstance(e, flags.Error) and (e.__cause__ or e.__context__) is not None:
        e = e.__cause__ or e.__context__
    if isinstance(e, SyntaxError):
        return f"SyntaxError: {e.msg} in {e.filename}, line {e.lineno}"
    text = str(e.args[0]) if isinstance(e, (KeyError, AttributeError)) and e.args else str(e)
    return f"{type(e).__name__}: {' '.join(text.split())}"


def parse_flags(argv: list[str]) -> list[str]:
    """absl's flag parsing, with a bad --config (missing file, syntax error, unknown key, bad value or
    variant) reported as one line instead of a traceback."""
    try:
        return FLAGS(argv)
    except SystemExit:
        raise
    except Exception as e:  # noqa: BLE001  (a config file may raise anything; say what and exit)
        name = next((a for a in argv[1:] if a.startswith("--config")), "--config")
        fail(f"diffax: error: bad {name.split('=')[0]}: {_one_line(e)}")
        raise  # unreachable: fail exits


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
    """Builds the experiment once and runs the modes in order; returns {'samples': ..., 'eval': ...}."""
    from diffax.training import builders, evaluate, train  # heavy imports after flag parsing

    exp = builders.build(config)
    # The files eval.* names are read before any work: a missing or damaged one stops here, not after training.
    eval_files = {}
    if "eval" in modes and not exp.data.is_toy and exp.objective != "noisy_classifier":
        eval_files["inception_variables"] = evaluate.check_eval_files(exp)
    out: dict = {}
    for mode in modes:
        if mode == "train":
            train.train_and_evaluate(exp, workdir)
        elif mode == "sample":
            out["samples"] = evaluate.sample(exp, workdir)
        else:
            out["eval"] = evaluate.evaluate(exp, workdir, samples=out.get("samples"), **eval_files)
    return out


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    try:
        modes = parse_modes(FLAGS.mode)
        workdir = check_workdir(FLAGS.workdir)
    except ValueError as e:
        raise app.UsageError(str(e)) from None
    try:
        config = FLAGS.config
        config.to_dict()  # a config file that failed to load raises here (the flag loads lazily)
    except Exception as e:  # noqa: BLE001
        fail(f"diffax: error: bad --config: {_one_line(e)}")
    if not FLAGS["verbosity"].present:
        logging.set_verbosity(logging.WARNING)  # Orbax logs every save at INFO; --verbosity=0 shows them
    from diffax.training import distributed

    distributed.initialize(FLAGS.coordinator_address, FLAGS.num_processes, FLAGS.process_id)
    import jax

    if jax.process_index() == 0:
        print(f"diffax: modes {modes}, workdir {workdir}, {jax.process_count()} process(es), "
              f"{jax.device_count()} device(s) [{jax.default_backend()}]", flush=True)  # fmt: skip
    from diffax.workdir_lock import WorkdirLockedError

    try:
        result = run(config, workdir, modes)
    except (*EXPECTED_ERRORS, WorkdirLockedError) as e:  # clear one-line errors, no traceback (--verbose: the traceback)
        if FLAGS.verbose:
            raise
        fail(f"diffax: error: {_one_line(e)}")
    if "eval" in result and jax.process_index() == 0:
        print("eval:", {k: v for k, v in result["eval"].items() if not isinstance(v, list)}, flush=True)


if __name__ == "__main__":
    flags.mark_flags_as_required(["workdir"])
    app.run(main, flags_parser=parse_flags)
