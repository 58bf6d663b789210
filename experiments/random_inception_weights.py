"""Writes random FID Inception-v3 weights (pytorch-fid's state-dict names, .npz) for dry runs and tests.

    python experiments/random_inception_weights.py /tmp/random_inception.npz [--seed 0]

The file loads like the real ``pt_inception-2015-12-05-6726825d.pth`` converted to .npz
(`diffax.models.inception.load_fid_weights`), so ``--config.eval.inception_weights=/tmp/random_inception.npz``
runs the whole FID / IS / KID path; the numbers mean nothing (see `random_fid_state_dict`).
"""

from __future__ import annotations

import argparse

from diffax.models.inception import save_random_fid_weights


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("path", help="output .npz")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    print(save_random_fid_weights(args.path, args.seed))


if __name__ == "__main__":
    main()
