"""Turn user arrays into validated model inputs: types, ranks, bands, NaN/inf, units, offsets.

Kept apart from :mod:`bands` (names and catalogues) so that each module has one job; everything a
user can get wrong about an input array is checked here, with a message that names the modality,
the band, the shape or the value and what was expected.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass
from typing import Any, Literal, Sequence

import numpy as np
import torch

from ._warnings import warn_user
from .bands import BandSelection, Modality, canonical_band_name, select_bands
from .errors import InputShapeError, InvalidValueError, OptionError, UnitsError
from .preprocess import looks_like_s2_offset, remove_s2_offset, warn_s2_offset

NodataPolicy = Literal["raise", "mask"]
NODATA_POLICIES: tuple[str, ...] = ("raise", "mask")
ArrayLike = Any  # numpy.ndarray | torch.Tensor

_LABEL = {"s1": "Sentinel-1", "s2": "Sentinel-2"}


@dataclass
class PreparedInput:
    """One modality, ready for the model.

    Attributes:
        data: ``(B, C, H, W)`` float32 raw values (offset removed), channels in model order; only
            the bands the user has when some are missing.
        selection: how user channels map onto model bands.
        valid: ``(B, 1, H, W)`` bool mask of pixels with data, or ``None`` when every pixel is valid.
        batched: whether the user passed a batch dimension.
        was_numpy: whether the user passed a numpy array (outputs follow).
        source_device: device of a user tensor (outputs go back there).
    """

    data: torch.Tensor
    selection: BandSelection
    valid: torch.Tensor | None
    batched: bool
    was_numpy: bool
    source_device: torch.device

    @property
    def present(self) -> tuple[int, ...] | None:
        """Model positions of the channels in :attr:`data` when bands are missing, else None."""
        return None if not self.selection.missing else self.selection.present_positions


def _to_tensor(x: ArrayLike, label: str) -> tuple[torch.Tensor, bool]:
    if isinstance(x, torch.Tensor):
        tensor, was_numpy = x, False
    elif isinstance(x, np.ndarray):
        if x.dtype == object or not (np.issubdtype(x.dtype, np.number)) or np.issubdtype(x.dtype, np.complexfloating):
            raise InputShapeError(
                f"{label} array has dtype {x.dtype}; expected a real numeric dtype "
                "(float32, float64, int16, uint16, ...)"
            )
        if x.dtype.byteorder not in ("=", "|", "<" if np.little_endian else ">"):
            x = x.astype(x.dtype.newbyteorder("="))
        tensor, was_numpy = torch.from_numpy(np.ascontiguousarray(x)), True
    else:
        raise InputShapeError(
            f"{label} input must be a numpy array or a torch tensor, got {type(x).__name__}"
        )
    if tensor.dtype == torch.bool or tensor.is_complex() or not (
        tensor.is_floating_point() or tensor.dtype in (torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64)
        or str(tensor.dtype) in ("torch.uint16", "torch.uint32")
    ):
        raise InputShapeError(f"{label} tensor has dtype {tensor.dtype}; expected a real numeric dtype")
    return tensor, was_numpy


def check_s2_offset(s2_offset: Any) -> None:
    """Refuse an S2 offset that is not ``None`` or a finite number of digital numbers >= 0.

    Raises:
        OptionError: a string, a bool, NaN, infinity or a negative number.
    """
    if s2_offset is None:
        return
    if (isinstance(s2_offset, (bool, np.bool_)) or not isinstance(s2_offset, numbers.Real)
            or not math.isfinite(s2_offset) or s2_offset < 0):
        raise OptionError(
            "s2_offset must be None or a finite number of digital numbers >= 0 (1000 for processing "
            f"baseline 04.00 and later, 0 for none), got {s2_offset!r}"
        )


def check_input_options(
    modality: Modality,
    given_bands: Any = None,
    *,
    nodata: Any = "raise",
    check_units: Any = True,
    s2_offset: Any = None,
) -> None:
    """Validate the options of :func:`prepare_input` before any data are looked at, so that an option
    is accepted or refused the same way whatever the array holds (NaN or not, offset or not).

    Raises:
        OptionError: ``nodata`` not ``"raise"`` / ``"mask"`` (exactly), ``check_units`` not a bool,
            a bad ``s2_offset`` (see :func:`check_s2_offset`), band names not given as a list or
            tuple of names.
        BandError: a band name that is not a band of ``modality``.
    """
    if not isinstance(nodata, str) or nodata not in NODATA_POLICIES:
        raise OptionError(f"nodata must be 'raise' or 'mask', got {nodata!r}")
    if not isinstance(check_units, (bool, np.bool_)):
        raise OptionError(f"check_units must be True or False, got {check_units!r}")
    check_s2_offset(s2_offset)
    if given_bands is not None:
        # Order is the point of the argument: a set or a mapping has none, and a string would be
        # read character by character.
        ordered = isinstance(given_bands, (list, tuple)) or (isinstance(given_bands, np.ndarray) and given_bands.ndim == 1)
        if not ordered:
            raise OptionError(
                f"{modality}_bands must be a list of band names in the array's channel order "
                f"(e.g. {['VV', 'VH'] if modality == 's1' else ['B02', 'B03', 'B04', 'B08']}), got "
                f"{given_bands!r} ({type(given_bands).__name__})"
            )
        for name in given_bands:
            canonical_band_name(name, modality)


def check_pair_options(
    s1_bands: Any = None,
    s2_bands: Any = None,
    *,
    nodata: Any = "raise",
    check_units: Any = True,
    s2_offset: Any = None,
) -> None:
    """:func:`check_input_options` for both modalities at once: what an S1 + S2 input path calls
    before it prepares either array, so that no option is judged after the other modality's data."""
    check_input_options("s1", s1_bands, nodata=nodata, check_units=check_units)
    check_input_options("s2", s2_bands, nodata=nodata, check_units=check_units, s2_offset=s2_offset)


def prepare_input(
    x: ArrayLike,
    modality: Modality,
    model_bands: Sequence[str],
    given_bands: Sequence[str] | None = None,
    *,
    nodata: NodataPolicy = "raise",
    check_units: bool = True,
    s2_offset: float | None = None,
) -> PreparedInput:
    """Validate and convert one modality.

    Args:
        x: ``(C, H, W)`` or ``(B, C, H, W)`` numpy array or tensor of raw values (S1 dB, S2 L1C DN).
        modality: ``"s1"`` or ``"s2"``.
        model_bands: the model's bands, in model order.
        given_bands: names of ``x``'s channels, in array order (``None``: already in model order).
        nodata: ``"raise"`` on NaN/inf, or ``"mask"`` them (excluded from the result).
        check_units: raise :class:`UnitsError` when values look like the wrong units.
        s2_offset: digital numbers to subtract from S2 (1000 for processing baseline >= 04.00);
            ``None`` means 0 but warns when the data look like they carry the offset.

    Raises:
        OptionError: a bad option (checked first, see :func:`check_input_options`);
        InputShapeError, BandError, InvalidValueError, UnitsError.
    """
    check_input_options(modality, given_bands, nodata=nodata, check_units=check_units, s2_offset=s2_offset)
    label = _LABEL[modality]
    tensor, was_numpy = _to_tensor(x, label)
    source_device = tensor.device
    if tensor.dim() not in (3, 4):
        raise InputShapeError(
            f"{label} input has shape {tuple(tensor.shape)} ({tensor.dim()} dimensions); expected "
            "(C, H, W) or (B, C, H, W)"
        )
    batched = tensor.dim() == 4
    if not batched:
        tensor = tensor.unsqueeze(0)
    n_channels = tensor.shape[1]
    if given_bands is None and n_channels != len(model_bands) and tensor.shape[-1] == len(model_bands):
        raise InputShapeError(
            f"{label} input has shape {tuple(tensor.shape if batched else tensor.shape[1:])}, which looks "
            f"channels-last; expected channels first, (C, H, W) or (B, C, H, W) with C = {len(model_bands)}. "
            "Use np.moveaxis(x, -1, -3) (or x.permute) first."
        )
    if tensor.shape[2] == 0 or tensor.shape[3] == 0 or tensor.shape[0] == 0:
        raise InputShapeError(f"{label} input has an empty dimension: shape {tuple(tensor.shape)}")
    selection = select_bands(modality, model_bands, n_channels, given_bands)
    if not selection.is_identity:
        index = [i for i in selection.source_index if i is not None]
        tensor = tensor[:, index]
    data = tensor.to(torch.float32)

    valid: torch.Tensor | None = None
    # One reduction, no temporary: min and max propagate NaN and are infinite when any value is.
    # torch.isfinite(data).all() costs 40x more on a (16, 13, 224, 224) batch (a bool copy of it).
    lowest, highest = (float(v) for v in torch.aminmax(data))
    if not (math.isfinite(lowest) and math.isfinite(highest)):
        finite = torch.isfinite(data)
        bad_bands = [
            selection.model_bands[pos]
            for pos, ch in zip(selection.present_positions, range(data.shape[1]))
            if not bool(finite[:, ch].all())
        ]
        count = int((~finite).sum())
        if nodata == "raise":
            raise InvalidValueError(
                f"{label} input has {count} NaN/inf value(s) in band(s) {', '.join(bad_bands)}. "
                "Pass nodata='mask' to exclude those pixels (pixels without any valid data come out "
                "as NaN), or fill them yourself."
            )
        valid = finite.all(dim=1, keepdim=True)
        data = torch.where(finite, data, torch.zeros((), dtype=data.dtype))

    if modality == "s2":
        present_names = [selection.model_bands[p] for p in selection.present_positions]
        if s2_offset is None:
            if looks_like_s2_offset(data, present_names, valid):
                warn_s2_offset()
        else:
            data = remove_s2_offset(data, s2_offset)
    if check_units:
        check_input_units(data, modality, valid, s2_offset_removed=bool(s2_offset))
    return PreparedInput(data, selection, valid, batched, was_numpy, source_device)


def check_input_units(
    data: torch.Tensor, modality: Modality, valid: torch.Tensor | None = None, s2_offset_removed: bool = False
) -> None:
    """Raise :class:`UnitsError` when values look like the wrong units.

    * Sentinel-2 scaled to reflectance 0-1 (largest valid value between 0 and 2): the models take
      digital numbers (reflectance x 10000).
    * Sentinel-1 in linear power or amplitude (every valid value >= 0): the models take dB, where
      land and water are mostly between -30 and 0 dB.

    All-zero / all-invalid inputs are not judged (they carry no data).
    """
    values = data if valid is None else data.masked_select(valid.expand_as(data))
    if values.numel() == 0:
        return
    low, high = (float(v) for v in torch.aminmax(values))  # one pass, no temporary
    if modality == "s2":
        # After removing an offset, dark pixels can be slightly negative; judge the magnitude.
        peak = max(abs(low), abs(high))
        if 0 < peak <= 2.0:
            raise UnitsError(
                f"Sentinel-2 values are all within [0, {peak:.3g}]: this looks like reflectance scaled "
                "to 0-1, but the model expects L1C digital numbers (reflectance x 10000). Multiply by "
                "10000, or pass check_units=False if the values are right."
            )
    else:
        if low >= 0 and high > 0:
            raise UnitsError(
                f"Sentinel-1 values are all >= 0 (min {low:.3g}, max {high:.3g}): this "
                "looks like linear power or amplitude, but the model expects backscatter in dB. "
                "Convert with 10 * log10(x) (power), or pass check_units=False if the values are right."
            )


def check_pair(s1: PreparedInput | None, s2: PreparedInput | None) -> None:
    """S1 and S2 must have the same batch size and the same height and width."""
    if s1 is None and s2 is None:
        raise InputShapeError("pass at least one of s1 and s2")
    if s1 is None or s2 is None:
        return
    b1, _, h1, w1 = s1.data.shape
    b2, _, h2, w2 = s2.data.shape
    if (h1, w1) != (h2, w2):
        raise InputShapeError(
            f"Sentinel-1 and Sentinel-2 differ in size: S1 is {h1} x {w1} pixels, S2 is {h2} x {w2}; "
            "co-located inputs on the same 10 m grid are expected"
        )
    if b1 != b2:
        raise InputShapeError(f"Sentinel-1 and Sentinel-2 differ in batch size: {b1} vs {b2}")
    if s1.batched != s2.batched:
        raise InputShapeError(
            "one of S1 and S2 has a batch dimension and the other does not: pass both as (C, H, W) "
            "or both as (B, C, H, W)"
        )


def warn_missing_bands(prepared: PreparedInput, modality: Modality) -> None:
    """Warn once per call that some model bands are absent and count as zero input."""
    missing = prepared.selection.missing
    if missing:
        warn_user(
            f"{_LABEL[modality]}: band(s) {', '.join(missing)} missing from the input; the model's "
            "first-layer weights for them are dropped (equivalent to a zero input after "
            "normalisation). Embeddings can differ from those of a full band stack."
        )


def prepare_pair(
    config: Any,
    s1: ArrayLike | None,
    s2: ArrayLike | None,
    s1_bands: Sequence[str] | None = None,
    s2_bands: Sequence[str] | None = None,
    s2_offset: float | None = None,
    nodata: NodataPolicy = "raise",
    check_units: bool = True,
) -> dict[str, PreparedInput]:
    """Validate and convert the user's S1 / S2 arrays for a model with ``config``'s bands.

    The one input path of every model in the package (backbones, task models, inference engines):
    band selection and re-ordering by name, NaN/inf policy, unit checks, the S2 offset, the S1/S2
    pairing checks and the missing-band warning. Modalities passed as ``None`` are left out.

    Args:
        config: the model's :class:`~s1s2_encoders.config.ModelConfig` (``s1_bands``, ``s2_bands``).

    Returns:
        ``{"s1": PreparedInput, "s2": PreparedInput}`` (only the given modalities).
    """
    check_pair_options(s1_bands, s2_bands, nodata=nodata, check_units=check_units, s2_offset=s2_offset)
    prepared: dict[str, PreparedInput] = {}
    if s1 is not None:
        prepared["s1"] = prepare_input(s1, "s1", config.s1_bands, s1_bands, nodata=nodata, check_units=check_units)
    if s2 is not None:
        prepared["s2"] = prepare_input(
            s2, "s2", config.s2_bands, s2_bands, nodata=nodata, check_units=check_units, s2_offset=s2_offset,
        )
    check_pair(prepared.get("s1"), prepared.get("s2"))
    for modality, item in prepared.items():
        warn_missing_bands(item, modality)  # type: ignore[arg-type]
    return prepared
