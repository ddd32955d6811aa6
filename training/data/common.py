"""What every pair dataset shares: windowed GeoTIFF reads, crops, the S2 offset, NaN handling.

A sample is a dict of tensors:

``s1``
    ``(2, h, w)`` float32, VV and VH backscatter in dB.
``s2``
    ``(13, h, w)`` float32, L1C digital numbers with the processing-baseline offset removed.
``valid``
    ``(1, h, w)`` bool, only with ``nan_policy="mask"``: pixels finite in both modalities.
label maps (``lc``, ``dfc``, ``label_map``, ...)
    ``(h, w)`` int64, raw values of the label files (mapping to classes is the task's job).
``index``, ``n_nan_replaced``
    int64 scalars: the dataset index actually returned, and how many samples were drawn and
    rejected because of NaN/inf before it (summed and logged by the training loop).

Randomness (crop offsets, replacements) comes from the :class:`~training.sampling.SampleKey`
seed, so a sample is the same whichever process or worker reads it.

NaN policy (SEN12MS Sentinel-1 patches contain NaNs, reference_facts.md §2.3):

``skip``
    a crop with any non-finite S1/S2 value is rejected and another sample is drawn (the draw is
    seeded, so this is reproducible); the number of rejections is reported in ``n_nan_replaced``.
    (The original code skipped the *whole batch* instead.)
``mask``
    non-finite pixels are set to 0 and marked invalid in ``valid``; the model leaves them out of
    normalisation and pooling. Crops with less than ``min_valid_fraction`` valid pixels are rejected
    as with ``skip``.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Literal, Sequence

import numpy as np
import rasterio
import rasterio.io
import torch
from rasterio.errors import RasterioIOError
from rasterio.windows import Window
from torch.utils.data import Dataset

from s1s2_encoders.errors import DataFileNotFoundError, DatasetError

from ..sampling import SampleKey, unpack_key

NanPolicy = Literal["skip", "mask"]
CropMode = Literal["random", "center", "none"]

S1_BAND_COUNT = 2
S2_L1C_BAND_COUNT = 13


@dataclass
class PairOptions:
    """Options every pair dataset takes (the ``data`` section's common keys).

    Attributes:
        crop_size: side of the square crop in pixels (``null``: the whole patch).
        crop: ``random`` (training), ``center`` (evaluation) or ``none``.
        s2_offset: digital numbers subtracted from S2 (1000 for processing baseline >= 04.00,
            i.e. products from 25 January 2022 on, such as TerraMesh L1C).
        nan_policy: ``skip`` or ``mask`` (see the module docstring).
        min_valid_fraction: with ``mask``, the least fraction of valid pixels a crop may have.
        max_nan_redraws: give up (with an error naming the dataset) after this many rejections in a row.
    """

    crop_size: int | None = None
    crop: CropMode = "random"
    s2_offset: float = 0.0
    nan_policy: NanPolicy = "skip"
    min_valid_fraction: float = 0.5
    max_nan_redraws: int = 50

    def __post_init__(self) -> None:
        if self.crop_size is not None and self.crop_size < 1:
            raise DatasetError(f"crop_size must be >= 1, got {self.crop_size}")
        if not 0.0 < self.min_valid_fraction <= 1.0:
            raise DatasetError(f"min_valid_fraction must be in (0, 1], got {self.min_valid_fraction}")


@dataclass
class RawSample:
    """What a subclass reads for one index (before offsets and NaN handling)."""

    s1: np.ndarray
    s2: np.ndarray
    labels: dict[str, np.ndarray] = field(default_factory=dict)


def choose_window(height: int, width: int, crop_size: int | None, mode: CropMode, rng: np.random.Generator, where: str) -> Window:
    """The crop window within a ``height x width`` patch.

    Raises:
        DatasetError: the crop is larger than the patch (names ``where``).
    """
    if crop_size is None or mode == "none":
        return Window(0, 0, width, height)
    if crop_size > height or crop_size > width:
        raise DatasetError(f"{where}: crop_size {crop_size} is larger than the patch ({height} x {width} pixels)")
    if mode == "center":
        return Window((width - crop_size) // 2, (height - crop_size) // 2, crop_size, crop_size)
    row = int(rng.integers(0, height - crop_size + 1))
    col = int(rng.integers(0, width - crop_size + 1))
    return Window(col, row, crop_size, crop_size)


@contextlib.contextmanager
def open_raster(path: Path) -> Iterator[rasterio.io.DatasetReader]:
    """``rasterio.open`` with errors that name the file.

    Raises:
        DataFileNotFoundError: the file does not exist.
        DatasetError: it exists but GDAL cannot read it.
    """
    try:
        src = rasterio.open(path)
    except RasterioIOError as exc:
        if not Path(path).exists():
            raise DataFileNotFoundError(f"missing file {path}") from exc
        raise DatasetError(f"cannot read {path}: {exc}") from exc
    try:
        yield src
    finally:
        src.close()


def raster_shape(path: Path) -> tuple[int, int, int]:
    """``(bands, height, width)`` of a GeoTIFF, with errors naming the file."""
    with open_raster(path) as src:
        return src.count, src.height, src.width


def read_from(src: rasterio.io.DatasetReader, window: Window | None = None, bands: Sequence[int] | None = None,
              dtype: str = "float32", expected_bands: int | None = None) -> np.ndarray:
    """Read ``bands`` (1-based; all by default) of an open raster through ``window``.

    Raises:
        DatasetError: wrong band count, the window exceeds the raster, or a read error.
    """
    path = src.name
    if expected_bands is not None and src.count != expected_bands:
        raise DatasetError(f"{path} has {src.count} band(s); expected {expected_bands}")
    if window is not None and (window.col_off + window.width > src.width or window.row_off + window.height > src.height):
        raise DatasetError(
            f"{path} is {src.height} x {src.width} pixels; the crop window "
            f"rows {window.row_off}..{window.row_off + window.height}, cols {window.col_off}..{window.col_off + window.width} "
            "does not fit (are the S1, S2 and label patches the same size?)"
        )
    try:
        return src.read(list(bands) if bands is not None else None, window=window, out_dtype=dtype)
    except RasterioIOError as exc:
        raise DatasetError(f"cannot read {path}: {exc}") from exc


def read_raster(path: Path, window: Window | None = None, bands: Sequence[int] | None = None,
                dtype: str = "float32", expected_bands: int | None = None) -> np.ndarray:
    """Open ``path`` and :func:`read_from` it."""
    with open_raster(path) as src:
        return read_from(src, window, bands, dtype, expected_bands)


class PairDataset(Dataset):
    """Base class: subclasses implement :meth:`__len__`, :meth:`read` and :meth:`sample_id`.

    ``__getitem__`` takes an ``int`` or a :class:`~training.sampling.SampleKey` and returns the
    sample dict described in the module docstring.
    """

    name = "pairs"

    def __init__(self, options: PairOptions):
        self.options = options

    def __len__(self) -> int:  # pragma: no cover - abstract
        raise NotImplementedError

    def read(self, index: int, rng: np.random.Generator) -> RawSample:  # pragma: no cover - abstract
        """Read (and crop) sample ``index``; ``rng`` chooses the crop."""
        raise NotImplementedError

    def sample_id(self, index: int) -> str:
        return str(index)

    def __getitem__(self, key: int | SampleKey) -> dict[str, torch.Tensor]:
        index, seed = unpack_key(key)
        if not 0 <= index < len(self):
            raise IndexError(f"{self.name}: index {index} out of range for {len(self)} samples")
        rng = np.random.default_rng(seed)
        rejected: list[str] = []
        current = index
        while True:
            raw = self.read(current, rng)
            sample = self._finish(raw)
            if sample is not None:
                sample["index"] = torch.tensor(current, dtype=torch.int64)
                sample["n_nan_replaced"] = torch.tensor(len(rejected), dtype=torch.int64)
                return sample
            rejected.append(self.sample_id(current))
            if len(rejected) > self.options.max_nan_redraws:
                raise DatasetError(
                    f"{self.name}: {len(rejected)} samples in a row had NaN/inf values "
                    f"(last: {', '.join(rejected[-3:])}); check the data or use nan_policy: mask"
                )
            current = int(rng.integers(len(self)))

    def _finish(self, raw: RawSample) -> dict[str, torch.Tensor] | None:
        s1 = np.asarray(raw.s1, dtype=np.float32)
        s2 = np.asarray(raw.s2, dtype=np.float32)
        if self.options.s2_offset:
            s2 = s2 - np.float32(self.options.s2_offset)
        finite = np.isfinite(s1).all(axis=0) & np.isfinite(s2).all(axis=0)
        out: dict[str, torch.Tensor] = {}
        if self.options.nan_policy == "skip":
            if not finite.all():
                return None
        else:
            if finite.mean() < self.options.min_valid_fraction:
                return None
            s1 = np.where(finite, s1, np.float32(0))
            s2 = np.where(finite, s2, np.float32(0))
            out["valid"] = torch.from_numpy(np.ascontiguousarray(finite[None]))
        out["s1"] = torch.from_numpy(np.ascontiguousarray(s1))
        out["s2"] = torch.from_numpy(np.ascontiguousarray(s2))
        for name, label in raw.labels.items():
            out[name] = torch.from_numpy(np.array(label, dtype=np.int64, order="C"))  # keeps 0-d labels 0-d
        return out


def file_pair_read(files: "SampleFiles", options: PairOptions, rng: np.random.Generator, where: str) -> RawSample:
    """Read one S1/S2(/labels) file set through a shared crop window."""
    with open_raster(files.s1) as src:  # one open: its size chooses the window
        window = choose_window(src.height, src.width, options.crop_size, options.crop, rng, where)
        s1 = read_from(src, window, expected_bands=S1_BAND_COUNT)
    s2 = read_raster(files.s2, window, expected_bands=S2_L1C_BAND_COUNT)
    labels = {name: read_raster(path, window, bands=[band], dtype="int64")[0] for name, (path, band) in files.labels.items()}
    return RawSample(s1, s2, labels)


@dataclass
class SampleFiles:
    """Files of one sample: S1, S2 and label rasters (name -> (path, 1-based band))."""

    sample_id: str
    s1: Path
    s2: Path
    labels: dict[str, tuple[Path, int]] = field(default_factory=dict)

    def all_paths(self) -> list[Path]:
        return [self.s1, self.s2, *(p for p, _ in self.labels.values())]


def check_files_exist(samples: Sequence[SampleFiles], where: str, show: int = 5) -> None:
    """Raise :class:`DataFileNotFoundError` listing missing files (count + first few)."""
    missing = [p for s in samples for p in s.all_paths() if not p.is_file()]
    if missing:
        listed = "\n  ".join(str(p) for p in missing[:show])
        more = f"\n  ... and {len(missing) - show} more" if len(missing) > show else ""
        raise DataFileNotFoundError(f"{where}: {len(missing)} file(s) missing:\n  {listed}{more}")


class FileListDataset(PairDataset):
    """A pair dataset backed by a list of :class:`SampleFiles`."""

    def __init__(self, samples: Sequence[SampleFiles], options: PairOptions, name: str, check_files: bool = True):
        super().__init__(options)
        self.samples = list(samples)
        self.name = name
        if not self.samples:
            raise DatasetError(f"{name}: no samples found")
        if check_files:
            check_files_exist(self.samples, name)

    def __len__(self) -> int:
        return len(self.samples)

    def sample_id(self, index: int) -> str:
        return self.samples[index].sample_id

    def read(self, index: int, rng: np.random.Generator) -> RawSample:
        files = self.samples[index]
        return file_pair_read(files, self.options, rng, f"{self.name} sample {files.sample_id}")


def collate_samples(samples: list[dict[str, Any]], keep: Sequence[str] | None = None) -> dict[str, torch.Tensor]:
    """Stack sample dicts into a batch.

    Args:
        samples: sample dicts with tensors of equal shapes per key.
        keep: only these keys (those present); other fields, e.g. label maps that only some
            datasets of a concatenation have, are dropped. ``None``: every key, which must then be
            present in every sample.

    Raises:
        DatasetError: samples disagree on the fields that are kept.
    """
    keys = [k for k in samples[0] if keep is None or k in keep]
    for s in samples[1:]:
        have = [k for k in s if keep is None or k in keep]
        if set(have) != set(keys):
            raise DatasetError(f"samples in one batch have different fields: {sorted(keys)} vs {sorted(have)}")
    return {k: torch.stack([s[k] for s in samples]) for k in keys}
