"""Whole-split image arrays: local IDX / npz files and TFDS random-access data sources.

All loaders return ``(images, labels)``: images uint8 NHWC (grayscale gets a trailing channel axis),
labels int32 (N,) or None. No TensorFlow is needed: local files are read with gzip/numpy, and TFDS
data sets are read through ``tfds.data_source`` (ArrayRecord files, decoded with numpy/PIL).
"""

from __future__ import annotations

import gzip
import hashlib
import os
import re
import zipfile
import zlib

import numpy as np

__all__ = [
    "IMAGE_DATASETS",
    "TFDS_DATASETS",
    "LOCAL_IDX_DATASETS",
    "MNIST_MD5",
    "MNIST_SHAPES",
    "FASHION_MNIST_GZ_MD5",
    "read_idx",
    "write_idx",
    "verify_md5",
    "load_idx_split",
    "load_npz",
    "tfds_source",
    "TfdsImageSource",
    "center_crop_resize",
]

TFDS_DATASETS: tuple[str, ...] = ("mnist", "fashion_mnist", "cifar10", "celeb_a")
LOCAL_IDX_DATASETS: tuple[str, ...] = ("mnist_local", "fashion_mnist_local")
IMAGE_DATASETS: tuple[str, ...] = TFDS_DATASETS + LOCAL_IDX_DATASETS + ("npz",)

SHARED_DATA_HINT = (
    "on this machine the real data lives in ../shared/data/ from the project root "
    "(/work/shared/data: mnist/ holds the IDX .gz files, cifar10-subset/ an .npz); see its README.md"
)

# md5 of the *decompressed* published MNIST files (LeCun et al. 1998).
MNIST_MD5: dict[str, str] = {
    "train-images-idx3-ubyte": "6bbc9ace898e44ae57da46a324031adb",
    "train-labels-idx1-ubyte": "a25bea736e30d166cdddb491f175f624",
    "t10k-images-idx3-ubyte": "2646ac647ad5339dbf082846283269ea",
    "t10k-labels-idx1-ubyte": "27ae3e4e09519cfbb04c329615203637",
}

# Shapes of the published files (MNIST and Fashion-MNIST alike). A file with one of these names AND this
# shape claims to be the published data, so its md5 is checked; others (subsets, test fixtures) are not.
MNIST_SHAPES: dict[str, tuple[int, ...]] = {
    "train-images-idx3-ubyte": (60000, 28, 28),
    "train-labels-idx1-ubyte": (60000,),
    "t10k-images-idx3-ubyte": (10000, 28, 28),
    "t10k-labels-idx1-ubyte": (10000,),
}

# Fashion-MNIST (Xiao et al. 2017) shares MNIST's file names and shapes; its md5s are published for the
# .gz files as distributed (github.com/zalandoresearch/fashion-mnist, README "Get the Data").
FASHION_MNIST_GZ_MD5: dict[str, str] = {
    "train-images-idx3-ubyte": "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
    "train-labels-idx1-ubyte": "25c81989df183df01b3e8a0aad5dffbe",
    "t10k-images-idx3-ubyte": "bef4ecab320f06d8554ea6380940ec79",
    "t10k-labels-idx1-ubyte": "bb300cfdad3c16e7a12a480ee83cd310",
}

# IDX type byte -> big-endian numpy dtype (http://yann.lecun.com/exdb/mnist/, "THE IDX FILE FORMAT").
_IDX_DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
IDX_IMAGES_MAGIC = 2051  # 0x00000803: uint8, 3 dims (N, rows, cols)
IDX_LABELS_MAGIC = 2049  # 0x00000801: uint8, 1 dim (N,)


def _open(path: str):
    return gzip.open(path, "rb") if path.endswith(".gz") else open(path, "rb")


def _read_bytes(path: str) -> bytes:
    """The (decompressed, if ``.gz``) bytes of ``path``; a damaged gzip file is a ValueError naming it."""
    try:
        with _open(path) as f:
            return f.read()
    except (EOFError, gzip.BadGzipFile, zlib.error) as e:
        raise ValueError(
            f"{path}: damaged or truncated gzip file ({type(e).__name__}: {e}); expected a complete "
            f"gzip-compressed file (check it with `gzip -t`, and copy it again)"
        ) from e


def _idx_stem(path: str) -> str:
    name = os.path.basename(path)
    return name[: -len(".gz")] if name.endswith(".gz") else name


def _check_published_md5(path: str, raw: bytes, shape: tuple[int, ...]) -> None:
    """If ``path`` is named and shaped like a published MNIST file, its md5 must be MNIST's or Fashion-MNIST's.

    MNIST: md5 of the decompressed bytes (`MNIST_MD5`); Fashion-MNIST: md5 of the .gz as distributed.
    """
    stem = _idx_stem(path)
    if MNIST_SHAPES.get(stem) != tuple(shape):
        return
    digest = hashlib.md5(raw).hexdigest()
    if digest == MNIST_MD5[stem]:
        return
    if path.endswith(".gz"):
        with open(path, "rb") as f:
            if hashlib.md5(f.read()).hexdigest() == FASHION_MNIST_GZ_MD5[stem]:
                return
    raise ValueError(
        f"{path}: md5 of the decompressed bytes is {digest}, expected {MNIST_MD5[stem]} (the published MNIST "
        f"{stem}; a Fashion-MNIST .gz as distributed has md5 {FASHION_MNIST_GZ_MD5[stem]}). The file is damaged "
        f"or not the published data: copy it again"
    )


def read_idx(path: str, *, expected_magic: int | None = None) -> np.ndarray:
    """Read an IDX file (optionally gzipped, by the ``.gz`` suffix) into a native-endian array.

    Format: a 4-byte big-endian magic 0x0000TTDD (TT the type code, DD the number of dimensions),
    DD big-endian uint32 sizes, then the data in C order. ``expected_magic`` (2051 for images,
    2049 for labels) is checked; a truncated or over-long payload is an error, and so is a damaged gzip
    stream. A file named and shaped like a published MNIST file (`MNIST_SHAPES`) must have its published
    md5 (`MNIST_MD5` of the decompressed bytes, or Fashion-MNIST's `FASHION_MNIST_GZ_MD5` of the .gz).
    """
    raw = _read_bytes(path)
    if len(raw) < 4:
        raise ValueError(f"{path}: not an IDX file ({len(raw)} bytes, need a 4-byte magic number)")
    magic = int.from_bytes(raw[:4], "big")
    if expected_magic is not None and magic != expected_magic:
        raise ValueError(f"{path}: IDX magic number {magic}, expected {expected_magic}")
    type_code, ndim = raw[2], raw[3]
    if raw[0] != 0 or raw[1] != 0 or type_code not in _IDX_DTYPES or ndim == 0:
        raise ValueError(f"{path}: bad IDX magic number {magic} (0x{magic:08x})")
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise ValueError(f"{path}: IDX header truncated ({len(raw)} bytes, need {header})")
    shape = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    dtype = np.dtype(_IDX_DTYPES[type_code])
    expected = int(np.prod(shape)) * dtype.itemsize
    if len(raw) - header != expected:
        raise ValueError(
            f"{path}: IDX payload has {len(raw) - header} bytes, shape {shape} of {dtype} needs {expected}"
        )
    _check_published_md5(path, raw, shape)
    return np.frombuffer(raw, dtype, offset=header).reshape(shape).astype(dtype.newbyteorder("="))


def write_idx(path: str, array: np.ndarray) -> None:
    """Write ``array`` as an IDX file (gzipped if ``path`` ends in ``.gz``); the inverse of `read_idx`."""
    array = np.asarray(array)
    codes = {np.dtype(v).newbyteorder("="): k for k, v in _IDX_DTYPES.items()}
    code = codes.get(array.dtype.newbyteorder("="))
    if code is None or array.ndim < 1:
        raise ValueError(f"write_idx: unsupported dtype {array.dtype} / ndim {array.ndim}")
    header = bytes([0, 0, code, array.ndim]) + b"".join(int(s).to_bytes(4, "big") for s in array.shape)
    data = array.astype(np.dtype(_IDX_DTYPES[code])).tobytes()
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "wb") as f:
        f.write(header + data)


def verify_md5(path: str, expected: str) -> str:
    """md5 of the (decompressed, if ``.gz``) bytes of ``path``; raises ValueError if != ``expected``."""
    digest = hashlib.md5(_read_bytes(path)).hexdigest()
    if digest != expected:
        raise ValueError(f"{path}: md5 of the decompressed bytes is {digest}, expected {expected}")
    return digest


_SPLIT_RE = re.compile(r"^(\w+)(?:\[(-?\d*):(-?\d*)\])?$")


def parse_split(split: str) -> tuple[str, slice]:
    """``'train'`` -> ('train', slice(None)); ``'train[:1000]'`` -> ('train', slice(None, 1000))."""
    m = _SPLIT_RE.match(split) if isinstance(split, str) else None
    if m is None:
        raise ValueError(f"bad split {split!r}: expected a name like 'train' or 'test', optionally sliced 'train[a:b]'")
    to_int = lambda s: int(s) if s else None  # noqa: E731
    return m.group(1), slice(to_int(m.group(2)), to_int(m.group(3)))


def _find(directory: str, stem: str) -> str:
    candidates = [os.path.join(directory, stem + ".gz"), os.path.join(directory, stem)]
    for c in candidates:
        if os.path.isfile(c):
            return c
    raise FileNotFoundError(
        f"missing IDX file: expected {os.path.abspath(candidates[0])} (or {os.path.abspath(candidates[1])}); "
        + SHARED_DATA_HINT
    )


def load_idx_split(directory: str, split: str = "train", *, num_classes: int = 10) -> tuple[np.ndarray, np.ndarray]:
    """MNIST-format split from ``directory``: ``{train,t10k}-{images-idx3,labels-idx1}-ubyte[.gz]``.

    ``split`` 'train' or 'test' ('t10k'), optionally sliced ('train[:1000]'). Checks the magic numbers
    (2051 images, 2049 labels), a 3-D uint8 image array, equal counts, labels in [0, num_classes).
    Returns images uint8 (N, H, W, 1) and labels int32 (N,).
    """
    base, sl = parse_split(split)
    prefix = {"train": "train", "test": "t10k", "t10k": "t10k"}.get(base)
    if prefix is None:
        raise ValueError(f"bad split {split!r} for IDX data: allowed 'train', 'test' (optionally sliced)")
    if directory is None:
        raise ValueError("IDX data needs path= (a directory of MNIST-format IDX files); " + SHARED_DATA_HINT)
    if not os.path.isdir(directory):
        raise FileNotFoundError(f"IDX data directory {os.path.abspath(directory)} does not exist; " + SHARED_DATA_HINT)
    img_path = _find(directory, f"{prefix}-images-idx3-ubyte")
    lab_path = _find(directory, f"{prefix}-labels-idx1-ubyte")
    images = read_idx(img_path, expected_magic=IDX_IMAGES_MAGIC)
    labels = read_idx(lab_path, expected_magic=IDX_LABELS_MAGIC)
    if images.ndim != 3 or labels.ndim != 1:  # the magic numbers already fix uint8 and ndim; belt and braces
        raise ValueError(f"{img_path}: expected images (N, H, W) and labels (N,), got {images.shape}, {labels.shape}")
    if images.shape[0] != labels.shape[0]:
        raise ValueError(f"{img_path} has {images.shape[0]} images but {lab_path} has {labels.shape[0]} labels")
    if labels.size and int(labels.max()) >= num_classes:
        raise ValueError(f"{lab_path}: label {int(labels.max())} out of range [0, {num_classes})")
    images, labels = images[sl], labels[sl]
    _check_nonempty(images, f"split {split!r} of {directory}")
    return images[..., None], labels.astype(np.int32)


NPZ_EXPECTED = (
    "expected an .npz written by numpy.savez or numpy.savez_compressed (a zip archive of .npy arrays) with key "
    "'images' (uint8, (N, H, W, C) or (N, H, W)) and optionally 'labels' (N,) ints"
)
_NPZ_READ_ERRORS = (zipfile.BadZipFile, zlib.error, EOFError, OSError, ValueError, KeyError)


def _check_is_zip(path: str) -> None:
    """ValueError naming ``path`` unless it is a zip archive (an .npz); says if it is a bare .npy instead."""
    if zipfile.is_zipfile(path):
        return
    with open(path, "rb") as f:
        head = f.read(6)
    what = "a single .npy array, not an .npz archive" if head == b"\x93NUMPY" else "not a zip archive (truncated?)"
    raise ValueError(f"{path}: not an .npz file ({what}); {NPZ_EXPECTED}")


def _npz_error(path: str, e: BaseException) -> ValueError:
    detail = " ".join(str(e).split())[:200]
    return ValueError(f"{path}: damaged or unreadable .npz ({type(e).__name__}: {detail}); {NPZ_EXPECTED}")


def _npy_header(path: str, key: str) -> tuple[tuple[int, ...], np.dtype]:
    """Shape and dtype of array ``key`` in an .npz without reading its data."""
    _check_is_zip(path)
    try:
        with zipfile.ZipFile(path) as z:
            names = z.namelist()
            if key + ".npy" not in names:
                keys = [n[: -len(".npy")] for n in names if n.endswith(".npy")]
                raise KeyError(f"no key {key!r} (keys: {keys})")
            with z.open(key + ".npy") as f:
                major, _ = np.lib.format.read_magic(f)
                read_header = np.lib.format.read_array_header_1_0 if major == 1 else np.lib.format.read_array_header_2_0
                shape, _, dtype = read_header(f)
    except KeyError as e:
        raise ValueError(f"{path}: {e.args[0]}; {NPZ_EXPECTED}") from e
    except _NPZ_READ_ERRORS as e:
        raise _npz_error(path, e) from e
    return shape, dtype


def _read_npz(path: str) -> tuple[np.ndarray, np.ndarray | None]:
    """(images, labels or None) of an .npz; ValueError naming the file if it is not a readable .npz with 'images'."""
    _check_is_zip(path)
    try:
        with np.load(path, allow_pickle=False) as z:
            files = list(z.files)
            if "images" in files:
                images = z["images"]
                labels = z["labels"] if "labels" in files else None
    except _NPZ_READ_ERRORS as e:
        raise _npz_error(path, e) from e
    if "images" not in files:
        raise ValueError(f"{path}: no key 'images' (keys: {files}); {NPZ_EXPECTED}")
    return images, labels


def _check_npz_path(path: str | None) -> str:
    if path is None:
        raise ValueError("the 'npz' data set needs path= (an .npz with key 'images'); " + SHARED_DATA_HINT)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"missing .npz file {os.path.abspath(path)}; " + SHARED_DATA_HINT)
    return path


def npz_shape(path: str) -> tuple[int, ...]:
    """Per-example image shape (H, W, C) of an .npz image file, read from the header only."""
    shape, _ = _npy_header(_check_npz_path(path), "images")
    return tuple(shape[1:]) + ((1,) if len(shape) == 3 else ())


def load_npz(path: str, split: str = "train") -> tuple[np.ndarray, np.ndarray | None]:
    """Images from an .npz: key ``images`` uint8 (N, H, W, C) or (N, H, W); optional key ``labels`` (N,) ints.

    The file is the 'train' split (slices 'train[a:b]' allowed). Returns uint8 NHWC, int32 labels or None.
    """
    path = _check_npz_path(path)
    base, sl = parse_split(split)
    if base != "train":
        raise ValueError(f"bad split {split!r} for an .npz source: it holds one split, 'train' (optionally sliced)")
    images, labels = _read_npz(path)
    if images.dtype != np.uint8:
        raise ValueError(f"{path}: 'images' must be uint8 (0..255), got {images.dtype}")
    if images.ndim == 3:
        images = images[..., None]
    if images.ndim != 4:
        raise ValueError(f"{path}: 'images' must be (N, H, W, C) or (N, H, W), got shape {images.shape}")
    if labels is not None:
        if labels.shape != images.shape[:1] or not np.issubdtype(labels.dtype, np.integer):
            raise ValueError(
                f"{path}: 'labels' must be integers of shape ({images.shape[0]},), got {labels.dtype} {labels.shape}"
            )
        labels = labels[sl].astype(np.int32)
    images = images[sl]
    _check_nonempty(images, f"split {split!r} of {path}")
    return images, labels


def _check_nonempty(images: np.ndarray, what: str) -> None:
    if images.shape[0] == 0:
        raise ValueError(f"{what} is empty (0 examples)")


# ----------------------------------------------------------------------------------------------- resizing
CELEBA_CROP = 140  # central 140x140 crop of the 218x178 aligned CelebA faces (as in score_sde / NCSNv2)


def center_crop_resize(image: np.ndarray, *, size: int, crop: int | None = None) -> np.ndarray:
    """Central ``crop`` x ``crop`` square (default min(H, W)), resized to ``size`` x ``size`` (PIL bicubic).

    ``image`` uint8 (H, W, C); returns uint8 (size, size, C). An image already of that size is returned as is.
    """
    from PIL import Image

    h, w, c = image.shape
    crop = min(h, w) if crop is None else crop
    if crop > min(h, w):
        raise ValueError(f"crop {crop} larger than the image {h}x{w}")
    top, left = (h - crop) // 2, (w - crop) // 2
    image = image[top : top + crop, left : left + crop]
    if crop == size:
        return np.ascontiguousarray(image)
    pil = Image.fromarray(image[..., 0] if c == 1 else image)
    out = np.asarray(pil.resize((size, size), Image.Resampling.BICUBIC))
    return out[..., None] if c == 1 else out


# -------------------------------------------------------------------------------------------------- TFDS
def tfds_source(name: str, split: str = "train", *, data_dir: str | None = None):
    """``tfds.data_source(name, split=split, data_dir=data_dir, download=False)`` (random access, no TF).

    The data set must already be prepared in ArrayRecord format under ``data_dir`` (e.g. on a machine with
    network: ``tfds build mnist --file_format=array_record --data_dir=DIR``); machines here are offline, so
    we never download. A missing preparation raises FileNotFoundError naming the directory expected.
    Under ``tfds.testing.mock_data(policy=MockPolicy.USE_CODE)`` this returns a mocked source (the
    mocked ``ArrayRecordDataSource`` needs neither files nor TensorFlow; see tests/test_data.py).
    """
    import tensorflow_datasets as tfds

    try:
        return tfds.data_source(name, split=split, data_dir=data_dir, download=False)
    except (NotImplementedError, FileNotFoundError, AssertionError, OSError) as e:
        try:
            expected = str(tfds.builder(name, data_dir=data_dir).data_dir)
        except Exception:  # noqa: BLE001 - only to name the path in the message
            expected = os.path.join(str(data_dir or "~/tensorflow_datasets"), name)
        raise FileNotFoundError(
            f"TFDS data set {name!r} (split {split!r}) is not prepared in ArrayRecord format at {expected} "
            f"({type(e).__name__}: {' '.join(str(e).split())[:300]}). Prepare it where there is network "
            f"(`tfds build {name} --file_format=array_record`), or use a local source ('mnist_local', 'npz'); "
            + SHARED_DATA_HINT
        ) from e


class TfdsImageSource:
    """Random access over a TFDS data source as ``(image uint8 HWC, label int or None)`` pairs.

    ``image_size`` (optional) center-crops (``crop``, default the short side) and resizes each image.
    """

    def __init__(self, source, *, image_size: int | None = None, crop: int | None = None):
        self.source = source
        self.image_size = image_size
        self.crop = crop
        self.has_labels = "label" in source[0] if len(source) else False

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, i: int):
        ex = self.source[int(i)]
        image = np.asarray(ex["image"], np.uint8)
        if image.ndim == 2:
            image = image[..., None]
        if self.image_size is not None and (image.shape[0] != self.image_size or image.shape[1] != self.image_size):
            image = center_crop_resize(image, size=self.image_size, crop=self.crop)
        return (image, int(ex["label"])) if self.has_labels else (image, None)
