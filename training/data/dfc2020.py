"""DFC2020 (IEEE GRSS Data Fusion Contest 2020) in the SEN12MS layout; shared with fine-tuning.

Layout::

    <root>/ROIs0000_validation/{s1_0, s2_0, lc_0, dfc_0}/ROIs0000_validation_<sensor>_0_p<ID>.tif
    <root>/ROIs0000_test/{s1_0, s2_0, lc_0[, dfc_0]}/ROIs0000_test_<sensor>_0_p<ID>.tif

The SSLTransformerRS protocol trains on "validation" (986 patches) and evaluates on "test"
(5,128) (reference_facts.md §3.4). The high-resolution test labels (``dfc_0`` of the test split) are
not in the public ``dfc_public_dataset.zip`` (§6), so they are optional here: asking for them when
they are absent is an error that says so.

Labels are returned raw: ``dfc`` is band 1 of ``dfc_0`` (the 10-class DFC scheme, 0 = no data) and
``lc`` is band 1 of ``lc_0`` (MODIS IGBP, 1..17). Mapping them to the 8 evaluation classes
(255 = ignore) is the task's job.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from s1s2_encoders.errors import DataFileNotFoundError, DatasetError

from .common import FileListDataset, PairOptions, SampleFiles
from .sen12ms import patch_path, read_split_csv, scan_layout

DFC2020_SPLITS = {"validation": "ROIs0000_validation", "test": "ROIs0000_test"}
DFC2020_LABELS = ("dfc", "lc")


@dataclass
class DFC2020Options(PairOptions):
    """The ``data`` entry for ``kind: dfc2020``.

    Attributes:
        root: folder holding ``ROIs0000_validation`` and/or ``ROIs0000_test``.
        split: ``validation`` or ``test``.
        split_csv: observation CSV (``Seasons.VALSET,0,ID`` rows, or the balanced-classes CSV);
            ``null``: ``<root>/<split>_observations.csv`` if present, else a directory scan.
        labels: which label rasters to return (``dfc``, ``lc``); ``[]`` for none (e.g. pretraining
            on the test images, whose ``dfc`` labels are not public).
        check_files: verify at start that every needed file exists.
    """

    root: str = ""
    split: Literal["validation", "test"] = "validation"
    split_csv: str | None = None
    labels: tuple[str, ...] = ("dfc",)
    check_files: bool = True

    def __post_init__(self) -> None:
        super().__post_init__()
        unknown = [label for label in self.labels if label not in DFC2020_LABELS]
        if unknown:
            raise DatasetError(f"DFC2020 labels {unknown} unknown; choose from {list(DFC2020_LABELS)}")


class DFC2020Dataset(FileListDataset):
    """DFC2020 S1/S2 pairs with optional ``dfc`` / ``lc`` label maps."""

    def __init__(self, options: DFC2020Options):
        root = Path(options.root)
        season = DFC2020_SPLITS[options.split]
        if not (root / season).is_dir():
            raise DataFileNotFoundError(f"DFC2020 {options.split} folder {root / season} does not exist")
        if "dfc" in options.labels and not (root / season / "dfc_0").is_dir():
            raise DataFileNotFoundError(
                f"{root / season / 'dfc_0'} does not exist: the DFC2020 {options.split} split has no high-resolution "
                "labels here (the public dfc_public_dataset.zip does not contain the test labels). "
                "Use labels: [] or labels: [lc] for this split."
            )
        csv_path = Path(options.split_csv) if options.split_csv else root / f"{options.split}_observations.csv"
        if options.split_csv or csv_path.is_file():
            rows = read_split_csv(csv_path)
            wrong = sorted({r.season for r in rows if r.season != season})
            if wrong:
                raise DatasetError(f"{csv_path} lists seasons {wrong}; the DFC2020 {options.split} split is {season}")
        else:
            rows = scan_layout(root, [season])
        samples = [
            SampleFiles(
                row.sample_id,
                patch_path(root, season, "s1", row.scene, row.patch_id),
                patch_path(root, season, "s2", row.scene, row.patch_id),
                {label: (patch_path(root, season, label, row.scene, row.patch_id), 1) for label in options.labels},
            )
            for row in rows
        ]
        super().__init__(samples, options, name=f"DFC2020 {options.split} ({root})", check_files=options.check_files)
        self.rows = rows
