r"""NCSN (Song & Ermon 2019) on MNIST: configs/mnist.py's 'ncsn' variant (see its docstring), under its own name.

    python -m diffax.main --config=configs/ncsn_mnist.py --workdir=/tmp/diffax_ncsn_mnist --mode=train,sample
    (the same as --config=configs/mnist.py:ncsn)

Expected: digits after ~20k steps (GPU: minutes); this is a CPU-heavy config, see
experiments/mnist_small.py for the DDPM counterpart sized for 2 cores.
"""

import os

from diffax.training import presets


def get_config(arg=None):
    variants = ",".join(["ncsn"] + ([arg] if arg else []))
    return presets.load_config(os.path.join(os.path.dirname(os.path.abspath(__file__)), "mnist.py") + ":" + variants)
