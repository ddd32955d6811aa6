"""Band catalogues of Sentinel-1 and Sentinel-2, their units, and re-ordering by band name.

The published models take

* **Sentinel-1**: ``VV, VH`` backscatter in **dB** (GRD or RTC, sigma0/gamma0 in decibels);
* **Sentinel-2 L1C**: the 13 bands ``B01 .. B12`` including ``B8A`` and ``B10``, in the SEN12MS order,
  as top-of-atmosphere **digital numbers** (reflectance x 10000) without the +1000 offset that
  processing baseline 04.00 (January 2022) added (see :mod:`s1s2_encoders.preprocess`).

Users may pass their arrays in any band order as long as they name the bands; names are
canonicalised (``"B8"`` -> ``"B08"``, ``"b8a"`` / ``"B08A"`` -> ``"B8A"``, ``"vv"`` -> ``"VV"``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal, Sequence

from .errors import BandError

Modality = Literal["s1", "s2"]

S1_BANDS: tuple[str, ...] = ("VV", "VH")
"""Sentinel-1 dual-polarisation bands, in model order."""

S2_L1C_BANDS: tuple[str, ...] = (
    "B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B09", "B10", "B11", "B12",
)
"""The 13 Sentinel-2 Level-1C bands in SEN12MS order (the order the published models expect)."""

S2_L2A_BANDS: tuple[str, ...] = tuple(b for b in S2_L1C_BANDS if b != "B10")
"""The 12 Sentinel-2 Level-2A bands (L2A products have no cirrus band B10)."""

S2_RGB_BANDS: tuple[str, ...] = ("B04", "B03", "B02")
"""True-colour bands (red, green, blue)."""

# Native ground sampling distance of each band in metres (used by readers that resample to 10 m).
S2_BAND_RESOLUTION_M: dict[str, int] = {
    "B01": 60, "B02": 10, "B03": 10, "B04": 10, "B05": 20, "B06": 20, "B07": 20,
    "B08": 10, "B8A": 20, "B09": 60, "B10": 60, "B11": 20, "B12": 20,
}

# Central wavelengths (nm) of Sentinel-2A, for documentation and model cards.
S2_BAND_WAVELENGTH_NM: dict[str, float] = {
    "B01": 442.7, "B02": 492.4, "B03": 559.8, "B04": 664.6, "B05": 704.1, "B06": 740.5,
    "B07": 782.8, "B08": 832.8, "B8A": 864.7, "B09": 945.1, "B10": 1373.5, "B11": 1613.7, "B12": 2202.4,
}

UNITS: dict[str, str] = {
    "s1": "dB (10*log10 of sigma0 or gamma0 backscatter)",
    "s2": "L1C top-of-atmosphere digital numbers (reflectance x 10000), without the +1000 "
    "processing-baseline offset",
}

_S2_NAME = re.compile(r"^(?:S2[_-]?)?B0*(\d{1,2})(A?)$")


def canonical_band_name(name: str, modality: Modality) -> str:
    """Return the catalogue spelling of a band name.

    Accepts common spellings: ``B1``/``B01``/``b01``/``S2B1`` for B01, ``B8A``/``B08A``/``b8a`` for
    B8A, ``vv``/``VV``/``S1VV`` for VV.

    Raises:
        BandError: the name is not a band of ``modality``.
    """
    if not isinstance(name, str):
        raise BandError(f"{modality.upper()} band names must be strings, got {name!r} ({type(name).__name__})")
    text = name.strip().upper()
    if modality == "s1":
        text = text.removeprefix("S1").lstrip("_-")
        if text in S1_BANDS:
            return text
        raise BandError(f"unknown Sentinel-1 band {name!r}; known bands: {', '.join(S1_BANDS)}")
    match = _S2_NAME.match(text)
    if match:
        number, suffix = int(match.group(1)), match.group(2)
        candidate = f"B{number}A" if suffix else f"B{number:02d}"
        if candidate in S2_L1C_BANDS:
            return candidate
    raise BandError(f"unknown Sentinel-2 band {name!r}; known bands: {', '.join(S2_L1C_BANDS)}")


def catalogue(modality: Modality) -> tuple[str, ...]:
    """All band names of a modality, in model order."""
    return S1_BANDS if modality == "s1" else S2_L1C_BANDS


@dataclass(frozen=True)
class BandSelection:
    """How the channels of a user array map onto a model's bands.

    Attributes:
        model_bands: the bands the model expects, in model order.
        source_index: for each model band, the channel index in the user array, or ``None`` when
            the user array does not have that band (only allowed for Sentinel-2).
    """

    model_bands: tuple[str, ...]
    source_index: tuple[int | None, ...]

    @property
    def missing(self) -> tuple[str, ...]:
        """Model bands absent from the user array."""
        return tuple(b for b, i in zip(self.model_bands, self.source_index) if i is None)

    @property
    def present_positions(self) -> tuple[int, ...]:
        """Positions (in model order) of the bands the user array has."""
        return tuple(p for p, i in enumerate(self.source_index) if i is not None)

    @property
    def is_identity(self) -> bool:
        """True when the user array is already exactly in model order."""
        return self.source_index == tuple(range(len(self.model_bands)))


def select_bands(
    modality: Modality,
    model_bands: Sequence[str],
    n_channels: int,
    given_bands: Sequence[str] | None = None,
    allow_missing: bool | None = None,
) -> BandSelection:
    """Work out how to re-order a user array of ``n_channels`` onto ``model_bands``.

    Args:
        modality: ``"s1"`` or ``"s2"``.
        model_bands: the model's bands in model order.
        n_channels: number of channels of the user array.
        given_bands: names of the user array's channels, in array order. ``None`` means the array
            is already in model order and must have exactly ``len(model_bands)`` channels.
        allow_missing: whether model bands may be absent from ``given_bands``. Defaults to True for
            Sentinel-2 (e.g. L2A without B10 for an L1C model) and False for Sentinel-1.

    Extra bands the model does not use are ignored (so a 13-band L1C stack can feed a 12-band
    model). Missing bands are reported in :attr:`BandSelection.missing`; the model then treats them
    as absent (see :meth:`S1S2Backbone.embed`).

    Raises:
        BandError: wrong channel count, unknown or duplicate names, or a missing band not allowed.
    """
    label = "Sentinel-1" if modality == "s1" else "Sentinel-2"
    model_bands = tuple(model_bands)
    if allow_missing is None:
        allow_missing = modality == "s2"
    if given_bands is None:
        if n_channels != len(model_bands):
            hint = ""
            if modality == "s2" and n_channels == len(S2_L2A_BANDS) and len(model_bands) == len(S2_L1C_BANDS):
                hint = " If these are the 12 L2A bands (no B10), pass s2_bands=S2_L2A_BANDS."
            elif modality == "s2" and n_channels == 2:
                hint = " A 2-channel array looks like Sentinel-1 (VV, VH): did you swap s1 and s2?"
            elif modality == "s1" and n_channels in (12, 13):
                hint = " A 12/13-channel array looks like Sentinel-2: did you swap s1 and s2?"
            raise BandError(
                f"{label} input has {n_channels} channels but the model expects {len(model_bands)} "
                f"({', '.join(model_bands)}). Pass the band names of your array "
                f"({modality}_bands=[...]) to select and re-order them.{hint}"
            )
        return BandSelection(model_bands, tuple(range(len(model_bands))))

    names = [canonical_band_name(b, modality) for b in given_bands]
    if len(names) != n_channels:
        raise BandError(
            f"{label}: {len(names)} band names given ({', '.join(map(str, given_bands))}) but the array "
            f"has {n_channels} channels"
        )
    seen: dict[str, int] = {}
    for position, name in enumerate(names):
        if name in seen:
            raise BandError(
                f"{label}: band {name} appears twice in the given band names "
                f"(channels {seen[name]} and {position}: {', '.join(map(str, given_bands))})"
            )
        seen[name] = position
    source_index = tuple(seen.get(band) for band in model_bands)
    missing = [b for b, i in zip(model_bands, source_index) if i is None]
    if missing and not allow_missing:
        raise BandError(
            f"{label}: the model needs band(s) {', '.join(missing)}, which the input does not have "
            f"(given: {', '.join(names)}; expected: {', '.join(model_bands)})"
        )
    if len(missing) == len(model_bands):
        raise BandError(
            f"{label}: none of the given bands ({', '.join(names)}) is used by the model "
            f"(expected: {', '.join(model_bands)})"
        )
    return BandSelection(model_bands, source_index)
