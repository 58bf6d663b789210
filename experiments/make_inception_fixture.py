r"""Golden fixture for `diffax.models.inception` (tests/test_inception_metrics.py): what pytorch-fid's FID
Inception-v3 computes with fixed random weights, so that CI checks the network numerically without torch.

    python -m venv /tmp/torchenv && /tmp/torchenv/bin/pip install numpy torch torchvision pytorch-fid
    /tmp/torchenv/bin/python experiments/make_inception_fixture.py  # -> tests/fixtures/inception_random_features.npz

The weights are not stored: `fixture_state_dict` fills every tensor of the state dict from its own NumPy
generator, seeded by (SEED, crc32 of the tensor's name), so both sides regenerate them bit for bit from the
names and shapes alone, in any order. Scales keep the activations O(1) through the 94 layers and the
features input-dependent: conv weights N(0, 2 / fan_in) (He), fc weight N(0, 1 / fan_in), BatchNorm scale
U(0.8, 1.2), bias and running mean N(0, 0.1^2), running variance U(0.5, 1.5), fc bias N(0, 0.1^2).

The network is pytorch-fid's own: ``pytorch_fid.inception.InceptionV3([3])`` (``use_fid_inception=True``:
``fid_inception_v3`` with the FID patches), whose download of the real weights is replaced by these random
ones; its input is what pytorch-fid's ``ImagePathDataset`` gives (uint8 / 255 in [0, 1], NCHW), resized there
to 299x299 (bilinear, align_corners=False) and mapped to [-1, 1]. The file holds (150 kB):

    images       (4, 32, 32, 3) uint8    random 4x4 colour blocks upsampled x8 plus pixel noise (seed IMAGE_SEED)
    pool3        (4, 2048) float32       pytorch-fid's pool3 features (the FID features)
    logits       (4, 1008) float32       pool3 @ fc.weight^T, WITHOUT the fc bias (diffax's IS logits)
    seed         the weights' SEED
    state_dict_shapes   JSON {name: shape} of every tensor (num_batches_tracked excluded)
    versions     JSON {"pytorch_fid", "torch", "torchvision"} that made the file
"""

from __future__ import annotations

import json
import os
import zlib

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIXTURE = os.path.join(REPO, "tests", "fixtures", "inception_random_features.npz")
SEED = 0
IMAGE_SEED = 1


def fixture_state_dict(shapes: dict[str, tuple[int, ...]], seed: int = SEED) -> dict[str, np.ndarray]:
    """Random float32 weights for pytorch-fid's state-dict ``shapes`` ({name: shape}), each tensor from
    ``np.random.default_rng([seed, crc32(name)])`` (independent of the order of ``shapes``).

    ``*.conv.weight`` (O, I, kh, kw): N(0, 2 / (I kh kw)); ``fc.weight`` (1008, 2048): N(0, 1 / 2048);
    ``*.bn.weight``: U(0.8, 1.2); ``*.bn.running_var``: U(0.5, 1.5); every bias and running mean: N(0, 0.1^2).
    """
    state = {}
    for name, shape in shapes.items():
        rng = np.random.default_rng([seed, zlib.crc32(name.encode())])
        shape = tuple(int(d) for d in shape)
        leaf = name.rsplit(".", 1)[-1]
        if leaf == "weight" and len(shape) in (2, 4):
            gain = 1.0 if name == "fc.weight" else 2.0
            value = rng.standard_normal(shape) * np.sqrt(gain / np.prod(shape[1:]))
        elif leaf == "weight":
            value = rng.uniform(0.8, 1.2, shape)
        elif leaf == "running_var":
            value = rng.uniform(0.5, 1.5, shape)
        elif leaf in ("bias", "running_mean"):
            value = 0.1 * rng.standard_normal(shape)
        else:
            raise ValueError(f"unexpected tensor in the FID Inception state dict: {name!r}")
        state[name] = value.astype(np.float32)
    return state


def fixture_images(n: int = 4, seed: int = IMAGE_SEED) -> np.ndarray:
    """uint8 (n, 32, 32, 3): random 4x4 colour blocks upsampled x8 plus N(0, 20^2) pixel noise."""
    rng = np.random.default_rng(seed)
    blocks = np.kron(rng.integers(0, 256, (n, 4, 4, 3)).astype(np.float64), np.ones((1, 8, 8, 1)))
    return np.clip(blocks + rng.normal(0, 20, (n, 32, 32, 3)), 0, 255).astype(np.uint8)


def main() -> None:
    import pytorch_fid
    import torch
    import torchvision
    from pytorch_fid import inception

    bare = inception._inception_v3(num_classes=1008, aux_logits=False, weights=None)
    shapes = {k: tuple(v.shape) for k, v in bare.state_dict().items() if not k.endswith("num_batches_tracked")}
    state = fixture_state_dict(shapes)
    torch_state = {k: torch.from_numpy(v) for k, v in state.items()}
    # fid_inception_v3 downloads the real weights and loads them (strictly): hand it ours instead.
    inception.load_state_dict_from_url = lambda *args, **kwargs: torch_state
    model = inception.InceptionV3([inception.InceptionV3.BLOCK_INDEX_BY_DIM[2048]]).eval()
    fc_weight = torch_state["fc.weight"]
    images = fixture_images()
    with torch.no_grad():
        x = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255.0  # ImagePathDataset's ToTensor
        pool3 = model(x)[0].squeeze(3).squeeze(2)
        logits = pool3 @ fc_weight.T
    versions = {"pytorch_fid": pytorch_fid.__version__, "torch": torch.__version__,
                "torchvision": torchvision.__version__}  # fmt: skip
    os.makedirs(os.path.dirname(FIXTURE), exist_ok=True)
    np.savez(FIXTURE, images=images, pool3=pool3.numpy().astype(np.float32), logits=logits.numpy().astype(np.float32),
             seed=np.asarray(SEED), state_dict_shapes=np.asarray(json.dumps(shapes)),
             versions=np.asarray(json.dumps(versions)))  # fmt: skip
    p = pool3.numpy()
    print(f"wrote {FIXTURE} ({os.path.getsize(FIXTURE)} bytes) with {versions}: pool3 mean {p.mean():.4g}, "
          f"std over images {p.std(0).mean():.4g}, fraction zero {np.mean(p == 0):.3f}")


if __name__ == "__main__":
    main()
