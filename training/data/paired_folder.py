"""A folder of co-located S1/S2 GeoTIFF pairs matched by file name: what users with their own data have.

::

    <root>/<s1_dir>/<id>.tif      2 bands: VV, VH in dB
    <root>/<s2_dir>/<id>.tif      13 bands: L1C digital numbers, SEN12MS band order
    <root>/<label_dir>/<id>.tif   optional, band 1 returned as ``label_map``

The defaults read the TerraMesh layout (``S1RTC`` / ``S2L1C``, bundled in
``examples/data/terramesh``). TerraMesh L1C carries the +1000 offset of processing baseline
04.00: use ``s2_offset: 1000`` for it (and for any product acquired from 25 January 2022 on).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from s1s2_encoders.errors import DataFileNotFoundError, DatasetError

from .common import FileListDataset, PairOptions, SampleFiles


@dataclass
class PairedFolderOptions(PairOptions):
    """The ``data`` entry for ``kind: paired_folder``.

    Attributes:
        root: the folder holding the modality sub-folders.
        s1_dir, s2_dir: sub-folders with the S1 and S2 files.
        label_dir: optional sub-folder of label rasters (band 1 -> ``label_map``).
        suffix: file-name ending of the rasters.
        unpaired: what to do with a file that has no partner: ``error`` (default; lists them),
            ``warn`` or ``ignore``.
    """

    root: str = ""
    s1_dir: str = "S1RTC"
    s2_dir: str = "S2L1C"
    label_dir: str | None = None
    suffix: str = ".tif"
    unpaired: Literal["error", "warn", "ignore"] = "error"


def _stems(folder: Path, suffix: str) -> dict[str, Path]:
    if not folder.is_dir():
        raise DataFileNotFoundError(f"folder {folder} does not exist")
    return {p.name[: -len(suffix)]: p for p in sorted(folder.iterdir()) if p.name.endswith(suffix) and p.is_file()}


class PairedFolderDataset(FileListDataset):
    """S1/S2 pairs matched by name in two sub-folders."""

    def __init__(self, options: PairedFolderOptions):
        root = Path(options.root)
        if not root.is_dir():
            raise DataFileNotFoundError(f"paired-folder root {root} does not exist")
        s1 = _stems(root / options.s1_dir, options.suffix)
        s2 = _stems(root / options.s2_dir, options.suffix)
        labels = _stems(root / options.label_dir, options.suffix) if options.label_dir else None
        common = sorted(set(s1) & set(s2) & (set(labels) if labels is not None else set(s1)))
        unpaired = sorted((set(s1) | set(s2) | set(labels or {})) - set(common))
        if unpaired and options.unpaired != "ignore":
            shown = ", ".join(unpaired[:5]) + (f" ... ({len(unpaired)} in all)" if len(unpaired) > 5 else "")
            message = (
                f"{root}: {len(unpaired)} sample name(s) lack a partner in {options.s1_dir}/{options.s2_dir}"
                f"{'/' + options.label_dir if options.label_dir else ''}: {shown}"
            )
            if options.unpaired == "error":
                raise DatasetError(message + " (set unpaired: warn or ignore to skip them)")
            warnings.warn(message + "; skipping them", stacklevel=2)
        if not common:
            raise DatasetError(
                f"{root}: no file name{options.suffix} appears in both {options.s1_dir}/ and {options.s2_dir}/"
            )
        samples = [
            SampleFiles(stem, s1[stem], s2[stem], {"label_map": (labels[stem], 1)} if labels is not None else {})
            for stem in common
        ]
        super().__init__(samples, options, name=f"paired folder {root}", check_files=False)
