"""The FID Inception-v3 (Szegedy et al. 2016) in Flax, as used for FID (Heusel et al. 2017).

Architecture of the TF graph ``inception-2015-12-05`` as patched in pytorch-fid
(`mseitzer/pytorch-fid`, ``fid_inception_v3``): torchvision's ``Inception3`` without the auxiliary
head, 1008 output classes, and the FID patches: the average pools of the A/C/E blocks exclude the
padding (``count_include_pad=False``), and the last E block (``Mixed_7c``) max-pools in its pool
branch. Outputs: the 2048-d "pool3" features (global average of ``Mixed_7c``) and the 1008 logits.

Parameter names mirror the PyTorch state dict (``Mixed_5b.branch1x1.conv.weight`` ->
``params['Mixed_5b']['branch1x1']['conv']['kernel']``), so ``load_fid_weights`` converts the
pytorch-fid weights (``pt_inception-2015-12-05-6726825d.pth``, re-saved as ``.npz``) without any
download. Convert once, where torch is installed:
    ``np.savez(out, **{k: v.numpy() for k, v in torch.load(pth).items()})``.
Input: NHWC images in [-1, 1]; resized (bilinear, half-pixel centres, as pytorch-fid's
``F.interpolate(..., align_corners=False)``) to 299x299 unless ``resize_input=False``
(``input_size`` changes the 299: tests run the same network at 75x75, its smallest input).

Random weights for tests and dry runs (no download): `random_fid_state_dict` / `save_random_fid_weights`,
or from the shell ``python experiments/random_inception_weights.py PATH.npz [--seed 0]``.

Checked against pytorch-fid's own network: tests/fixtures/inception_random_features.npz holds its pool3
features and logits of 4 images with fixed random weights (experiments/make_inception_fixture.py);
test_inception_metrics.py loads the same weights here and compares (1e-5 of the largest feature).
"""

from __future__ import annotations

import functools
import os
import pickle
import zipfile
import zlib
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array

__all__ = ["InceptionV3", "avg_pool3", "load_fid_weights", "fid_state_dict_shapes", "random_fid_state_dict",
           "save_random_fid_weights", "FID_NUM_CLASSES", "POOL3_DIM", "FID_INPUT_SIZE"]  # fmt: skip

FID_NUM_CLASSES = 1008
POOL3_DIM = 2048
FID_INPUT_SIZE = 299


def _pad(p) -> tuple[tuple[int, int], tuple[int, int]]:
    ph, pw = (p, p) if isinstance(p, int) else p
    return ((ph, ph), (pw, pw))


class BasicConv2d(nn.Module):
    """Conv (no bias) -> BatchNorm(eps 1e-3, running statistics) -> ReLU (torchvision ``BasicConv2d``)."""

    features: int
    kernel: tuple[int, int] = (1, 1)
    stride: int = 1
    padding: Any = 0

    @nn.compact
    def __call__(self, x: Array) -> Array:
        x = nn.Conv(self.features, self.kernel, strides=(self.stride, self.stride), padding=_pad(self.padding),
                    use_bias=False, name="conv")(x)
        x = nn.BatchNorm(use_running_average=True, epsilon=1e-3, name="bn")(x)
        return nn.relu(x)


def avg_pool3(x: Array) -> Array:
    """3x3 average pool, stride 1, padding 1, averaging only the real (unpadded) inputs: TF's average pool,
    which pytorch-fid reproduces with count_include_pad=False."""
    return nn.avg_pool(x, (3, 3), strides=(1, 1), padding=((1, 1), (1, 1)), count_include_pad=False)


def _max3s2(x: Array) -> Array:
    return nn.max_pool(x, (3, 3), strides=(2, 2), padding="VALID")


class InceptionA(nn.Module):
    pool_features: int

    @nn.compact
    def __call__(self, x: Array) -> Array:
        b1 = BasicConv2d(64, name="branch1x1")(x)
        b5 = BasicConv2d(48, name="branch5x5_1")(x)
        b5 = BasicConv2d(64, (5, 5), padding=2, name="branch5x5_2")(b5)
        b3 = BasicConv2d(64, name="branch3x3dbl_1")(x)
        b3 = BasicConv2d(96, (3, 3), padding=1, name="branch3x3dbl_2")(b3)
        b3 = BasicConv2d(96, (3, 3), padding=1, name="branch3x3dbl_3")(b3)
        bp = BasicConv2d(self.pool_features, name="branch_pool")(avg_pool3(x))
        return jnp.concatenate([b1, b5, b3, bp], axis=-1)


class InceptionB(nn.Module):
    @nn.compact
    def __call__(self, x: Array) -> Array:
        b3 = BasicConv2d(384, (3, 3), stride=2, name="branch3x3")(x)
        bd = BasicConv2d(64, name="branch3x3dbl_1")(x)
        bd = BasicConv2d(96, (3, 3), padding=1, name="branch3x3dbl_2")(bd)
        bd = BasicConv2d(96, (3, 3), stride=2, name="branch3x3dbl_3")(bd)
        return jnp.concatenate([b3, bd, _max3s2(x)], axis=-1)


class InceptionC(nn.Module):
    channels_7x7: int

    @nn.compact
    def __call__(self, x: Array) -> Array:
        c7 = self.channels_7x7
        b1 = BasicConv2d(192, name="branch1x1")(x)
        b7 = BasicConv2d(c7, name="branch7x7_1")(x)
        b7 = BasicConv2d(c7, (1, 7), padding=(0, 3), name="branch7x7_2")(b7)
        b7 = BasicConv2d(192, (7, 1), padding=(3, 0), name="branch7x7_3")(b7)
        bd = BasicConv2d(c7, name="branch7x7dbl_1")(x)
        bd = BasicConv2d(c7, (7, 1), padding=(3, 0), name="branch7x7dbl_2")(bd)
        bd = BasicConv2d(c7, (1, 7), padding=(0, 3), name="branch7x7dbl_3")(bd)
        bd = BasicConv2d(c7, (7, 1), padding=(3, 0), name="branch7x7dbl_4")(bd)
        bd = BasicConv2d(192, (1, 7), padding=(0, 3), name="branch7x7dbl_5")(bd)
        bp = BasicConv2d(192, name="branch_pool")(avg_pool3(x))
        return jnp.concatenate([b1, b7, bd, bp], axis=-1)


class InceptionD(nn.Module):
    @nn.compact
    def __call__(self, x: Array) -> Array:
        b3 = BasicConv2d(192, name="branch3x3_1")(x)
        b3 = BasicConv2d(320, (3, 3), stride=2, name="branch3x3_2")(b3)
        b7 = BasicConv2d(192, name="branch7x7x3_1")(x)
        b7 = BasicConv2d(192, (1, 7), padding=(0, 3), name="branch7x7x3_2")(b7)
        b7 = BasicConv2d(192, (7, 1), padding=(3, 0), name="branch7x7x3_3")(b7)
        b7 = BasicConv2d(192, (3, 3), stride=2, name="branch7x7x3_4")(b7)
        return jnp.concatenate([b3, b7, _max3s2(x)], axis=-1)


class InceptionE(nn.Module):
    """E block; ``pool='avg'`` (FIDInceptionE_1, padding excluded) or ``'max'`` (FIDInceptionE_2)."""

    pool: str = "avg"

    @nn.compact
    def __call__(self, x: Array) -> Array:
        b1 = BasicConv2d(320, name="branch1x1")(x)
        b3 = BasicConv2d(384, name="branch3x3_1")(x)
        b3 = jnp.concatenate([BasicConv2d(384, (1, 3), padding=(0, 1), name="branch3x3_2a")(b3),
                              BasicConv2d(384, (3, 1), padding=(1, 0), name="branch3x3_2b")(b3)], axis=-1)
        bd = BasicConv2d(448, name="branch3x3dbl_1")(x)
        bd = BasicConv2d(384, (3, 3), padding=1, name="branch3x3dbl_2")(bd)
        bd = jnp.concatenate([BasicConv2d(384, (1, 3), padding=(0, 1), name="branch3x3dbl_3a")(bd),
                              BasicConv2d(384, (3, 1), padding=(1, 0), name="branch3x3dbl_3b")(bd)], axis=-1)
        if self.pool == "avg":
            pooled = avg_pool3(x)
        else:
            pooled = nn.max_pool(x, (3, 3), strides=(1, 1), padding=((1, 1), (1, 1)))
        bp = BasicConv2d(192, name="branch_pool")(pooled)
        return jnp.concatenate([b1, b3, bd, bp], axis=-1)


class InceptionV3(nn.Module):
    """FID Inception-v3: ``apply(variables, x)`` -> ``(pool3 (B, 2048), logits (B, 1008))``.

    x: (B, H, W, 3) in [-1, 1] (at least 75x75 when ``resize_input=False``), resized to
    ``input_size`` x ``input_size`` (299 for FID; >= 75) unless ``resize_input=False``. Inference only:
    BatchNorm uses the running statistics of the ``batch_stats`` collection.
    """

    resize_input: bool = True
    num_classes: int = FID_NUM_CLASSES
    input_size: int = FID_INPUT_SIZE

    @nn.compact
    def __call__(self, x: Array) -> tuple[Array, Array]:
        if x.ndim != 4 or x.shape[-1] != 3:
            raise ValueError(f"InceptionV3 expects (B, H, W, 3) images, got shape {x.shape}")
        if self.resize_input:
            if self.input_size < 75:
                raise ValueError(f"InceptionV3 input_size must be >= 75, got {self.input_size}")
            size = (x.shape[0], self.input_size, self.input_size, 3)
            x = jax.image.resize(x, size, method="bilinear", antialias=False)
        elif min(x.shape[1:3]) < 75:
            raise ValueError(f"InceptionV3 needs H, W >= 75 without resizing, got {x.shape[1:3]}")
        x = BasicConv2d(32, (3, 3), stride=2, name="Conv2d_1a_3x3")(x)
        x = BasicConv2d(32, (3, 3), name="Conv2d_2a_3x3")(x)
        x = BasicConv2d(64, (3, 3), padding=1, name="Conv2d_2b_3x3")(x)
        x = _max3s2(x)
        x = BasicConv2d(80, name="Conv2d_3b_1x1")(x)
        x = BasicConv2d(192, (3, 3), name="Conv2d_4a_3x3")(x)
        x = _max3s2(x)
        x = InceptionA(32, name="Mixed_5b")(x)
        x = InceptionA(64, name="Mixed_5c")(x)
        x = InceptionA(64, name="Mixed_5d")(x)
        x = InceptionB(name="Mixed_6a")(x)
        for name, c7 in (("Mixed_6b", 128), ("Mixed_6c", 160), ("Mixed_6d", 160), ("Mixed_6e", 192)):
            x = InceptionC(c7, name=name)(x)
        x = InceptionD(name="Mixed_7a")(x)
        x = InceptionE("avg", name="Mixed_7b")(x)
        x = InceptionE("max", name="Mixed_7c")(x)
        pool3 = jnp.mean(x, axis=(1, 2))
        return pool3, nn.Dense(self.num_classes, name="fc")(pool3)


@functools.lru_cache(maxsize=1)
def _variable_shapes() -> Any:
    """The abstract variables (shapes and dtypes) of ``InceptionV3()`` (the same at every input size)."""
    x = jnp.zeros((1, 75, 75, 3))
    return jax.eval_shape(lambda: InceptionV3(resize_input=False).init(jax.random.PRNGKey(0), x))


def _torch_to_flax(key: str, value: np.ndarray) -> tuple[str, tuple[str, ...], np.ndarray]:
    """Maps one PyTorch state-dict entry to (collection, path, array) in the Flax variables."""
    *path, leaf = key.split(".")
    if path and path[-1] == "conv" and leaf == "weight":
        return "params", (*path, "kernel"), np.transpose(value, (2, 3, 1, 0))  # OIHW -> HWIO
    if path and path[-1] == "bn":
        table = {"weight": ("params", "scale"), "bias": ("params", "bias"),
                 "running_mean": ("batch_stats", "mean"), "running_var": ("batch_stats", "var")}
        if leaf in table:
            col, name = table[leaf]
            return col, (*path, name), value
    if path == ["fc"] and leaf in ("weight", "bias"):
        return "params", ("fc", "kernel" if leaf == "weight" else "bias"), value.T if leaf == "weight" else value
    raise ValueError(f"unexpected key in FID Inception weights: {key!r}")


# What reading damaged bytes raises: zip (truncated, bad CRC), zlib, numpy's pickle refusal, torch's readers.
_READ_ERRORS = (zipfile.BadZipFile, zlib.error, EOFError, OSError, ValueError, KeyError, RuntimeError,
                pickle.UnpicklingError, AttributeError, TypeError, IndexError)  # fmt: skip


def _read_state_dict(path: str) -> dict[str, np.ndarray]:
    """{key: array} of a state dict saved as .npz (key -> array) or, with torch, as .pth / .pt; ValueError
    starting with ``path`` and saying what is wrong for a file that is not one (garbage bytes, truncated)."""
    if path.endswith(".npz"):
        if not zipfile.is_zipfile(path):
            raise ValueError(f"{path}: not an .npz file (not a zip archive: garbage or truncated?); expected "
                             "pytorch-fid's Inception state dict saved with numpy.savez")  # fmt: skip
        try:
            with np.load(path, allow_pickle=False) as f:
                return {k: np.asarray(f[k]) for k in f.files}
        except _READ_ERRORS as e:
            raise ValueError(f"{path}: damaged or unreadable .npz ({type(e).__name__}: "
                             f"{' '.join(str(e).split())[:200]})") from e  # fmt: skip
    if path.endswith((".pth", ".pt")):
        try:
            import torch  # noqa: PLC0415  (optional dependency)
        except ImportError as e:
            raise ValueError(f"{path}: reading a .pth needs torch; convert it to .npz where torch is installed ("
                             "np.savez(out, **{k: v.numpy() for k, v in torch.load(pth).items()}))") from e  # fmt: skip
        try:
            state = torch.load(path, map_location="cpu")
            if not isinstance(state, dict):
                raise TypeError(f"holds a {type(state).__name__}, not a state dict")
            return {k: v.numpy() for k, v in state.items()}
        except _READ_ERRORS as e:
            raise ValueError(f"{path}: damaged or unreadable torch state dict ({type(e).__name__}: "
                             f"{' '.join(str(e).split())[:200]})") from e  # fmt: skip
    raise ValueError(f"{path}: FID weights must be a .npz (or .pth with torch)")


def load_fid_weights(path: str | os.PathLike, *, template: Any | None = None) -> dict:
    """Reads the pytorch-fid Inception weights from a local file into Flax variables (no download).

    ``path``: a ``.npz`` of the PyTorch state dict (key -> array; ``num_batches_tracked`` ignored) or,
    if torch is installed, the ``.pth`` itself. Returns ``{'params': ..., 'batch_stats': ...}`` for
    ``InceptionV3().apply``. Every variable of the model must be present with the right shape
    (checked against ``template``, by default the abstract init of ``InceptionV3()``). A file that cannot
    be read (garbage, truncated) or does not hold these weights: ValueError whose message starts with
    ``path``.
    """
    path = os.fspath(path)
    state = _read_state_dict(path)

    variables: dict = {"params": {}, "batch_stats": {}}
    for key, value in state.items():
        if key.endswith("num_batches_tracked"):
            continue
        try:
            col, keys, arr = _torch_to_flax(key, value)
        except ValueError as e:
            raise ValueError(f"{path}: {e}") from e
        node = variables[col]
        for k in keys[:-1]:
            node = node.setdefault(k, {})
        node[keys[-1]] = jnp.asarray(arr, jnp.float32)

    if template is None:
        template = _variable_shapes()
    want = {jax.tree_util.keystr(p): x.shape for p, x in jax.tree_util.tree_leaves_with_path(template)}
    got = {jax.tree_util.keystr(p): x.shape for p, x in jax.tree_util.tree_leaves_with_path(variables)}
    if want != got:
        missing = sorted(set(want) - set(got))[:5]
        extra = sorted(set(got) - set(want))[:5]
        bad = sorted(k for k in set(want) & set(got) if want[k] != got[k])[:5]
        raise ValueError(f"{path}: the FID weights do not match InceptionV3: missing {missing}, "
                         f"unexpected {extra}, wrong shape {bad}")
    return variables


def _flax_to_torch(path: tuple[str, ...], shape: tuple[int, ...]) -> tuple[str, tuple[int, ...]]:
    """The PyTorch state-dict key and shape of one Flax variable (inverse of `_torch_to_flax`)."""
    col, *mods, leaf = path
    if col == "params" and mods == ["fc"]:
        return ("fc.weight", shape[::-1]) if leaf == "kernel" else ("fc.bias", shape)
    if leaf == "kernel":
        return ".".join(mods) + ".weight", (shape[3], shape[2], shape[0], shape[1])  # HWIO -> OIHW
    name = {"scale": "weight", "bias": "bias", "mean": "running_mean", "var": "running_var"}[leaf]
    return ".".join(mods) + "." + name, shape


def fid_state_dict_shapes() -> dict[str, tuple[int, ...]]:
    """{PyTorch state-dict key: shape} of every tensor ``load_fid_weights`` needs (pytorch-fid's
    ``fid_inception_v3`` layout without ``num_batches_tracked``), in the order of the Flax variables."""
    out = {}
    for p, leaf in jax.tree_util.tree_leaves_with_path(_variable_shapes()):
        key, shape = _flax_to_torch(tuple(k.key for k in p), tuple(leaf.shape))
        out[key] = shape
    return out


def random_fid_state_dict(seed: int = 0) -> dict[str, np.ndarray]:
    """Random weights in pytorch-fid's state-dict format (float32 NumPy; `load_fid_weights` reads them).

    For tests and dry runs where the real weights are not at hand: convolutions and the fc layer
    He-normal (std sqrt(2 / fan_in)), BatchNorm scale ~ U(0.8, 1.2), bias ~ N(0, 0.1^2), running
    mean ~ N(0, 0.1^2), running variance ~ U(0.8, 1.2), so activations stay O(1) through the 94
    layers and the features are non-degenerate. Deterministic in ``seed`` (NumPy generator).
    """
    rng = np.random.default_rng(seed)
    state = {}
    for key, shape in fid_state_dict_shapes().items():
        name = key.rsplit(".", 1)[-1]
        if name == "weight" and len(shape) in (2, 4):
            value = rng.standard_normal(shape, np.float32) * np.float32(np.sqrt(2.0 / np.prod(shape[1:])))
        elif name in ("weight", "running_var"):
            value = rng.uniform(0.8, 1.2, shape).astype(np.float32)
        else:
            value = rng.standard_normal(shape, np.float32) * np.float32(0.1)
        state[key] = value
    return state


def save_random_fid_weights(path: str | os.PathLike, seed: int = 0) -> str:
    """Writes `random_fid_state_dict(seed)` to ``path`` (.npz) and returns the path."""
    path = os.fspath(path)
    if not path.endswith(".npz"):
        raise ValueError(f"random FID weights are saved as .npz, got {path!r}")
    np.savez(path, **random_fid_state_dict(seed))
    return path

