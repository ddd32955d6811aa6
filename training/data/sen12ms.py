"""SEN12MS (Schmitt et al. 2019) in its published folder layout, with the SSLTransformerRS split CSVs.

Layout (reference_facts.md §3.1)::

    <root>/<season>/<sensor>_<scene>/<season>_<sensor>_<scene>_p<ID>.tif

with seasons ``ROIs1158_spring``, ``ROIs1868_summer``, ``ROIs1970_fall``, ``ROIs2017_winter``
and sensors ``s1`` (VV, VH dB, float32), ``s2`` (13 L1C bands, uint16 DN) and ``lc`` (4 MODIS
land-cover bands; band 1 is IGBP). DFC2020 uses the same layout with season
``ROIs0000_validation`` / ``ROIs0000_test``, scene ``0`` (see :mod:`training.data.dfc2020`).

Split CSVs (``splits/sen12ms_observations.csv`` etc. of HSG-AIML/SSLTransformerRS) are headerless
``Season,Scene,ID`` rows such as ``Seasons.SPRING,26,475``; the season is the name of the
``Seasons`` enum of the original code (``SPRING`` ... ``TESTSET``, ``VALSET``) or a folder name.
The oversampled ``validation_observations_balanced_classes.csv`` has a header
``Season,Scene,ID,dfc_label,copy_nr`` and is read too (extra columns ignored).
"""

from __future__ import annotations

import csv
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from s1s2_encoders.errors import DataFileNotFoundError, DatasetError

from .common import FileListDataset, PairOptions, SampleFiles

SEN12MS_SEASONS: tuple[str, ...] = ("ROIs1158_spring", "ROIs1868_summer", "ROIs1970_fall", "ROIs2017_winter")

# The `Seasons` enum of the original code (dfc_sen12ms_dataset.py): member name -> folder.
SEASON_ALIASES: dict[str, str] = {
    "SPRING": "ROIs1158_spring",
    "SUMMER": "ROIs1868_summer",
    "FALL": "ROIs1970_fall",
    "WINTER": "ROIs2017_winter",
    "TESTSET": "ROIs0000_test",
    "VALSET": "ROIs0000_validation",
    "AUTUMN_DFC": "ROIs0000_autumn",
    "WINTER_DFC": "ROIs0000_winter",
    "SPRING_DFC": "ROIs0000_spring",
    "SUMMER_DFC": "ROIs0000_summer",
}
_FOLDER = re.compile(r"^ROIs\d{4}_[a-z]+$")
_PATCH = re.compile(r"^(?P<season>ROIs\d{4}_[a-z]+)_(?P<sensor>[a-z0-9]+)_(?P<scene>\d+)_p(?P<id>\d+)\.tif$")


@dataclass(frozen=True)
class SplitRow:
    """One observation: season folder, scene number, patch ID."""

    season: str
    scene: int
    patch_id: int

    @property
    def sample_id(self) -> str:
        return f"{self.season}/{self.scene}/p{self.patch_id}"


def season_folder(name: str) -> str:
    """``Seasons.SPRING`` / ``SPRING`` / ``ROIs1158_spring`` -> ``ROIs1158_spring``.

    Raises:
        DatasetError: an unknown season (the message lists the known ones).
    """
    text = name.strip()
    if _FOLDER.match(text):
        return text
    key = text.removeprefix("Seasons.").upper()
    if key in SEASON_ALIASES:
        return SEASON_ALIASES[key]
    raise DatasetError(
        f"unknown season {name!r}; expected one of {', '.join('Seasons.' + k for k in SEASON_ALIASES)} "
        f"or a folder name such as {SEN12MS_SEASONS[0]}"
    )


def patch_path(root: str | Path, season: str, sensor: str, scene: int | str, patch_id: int | str) -> Path:
    """``<root>/<season>/<sensor>_<scene>/<season>_<sensor>_<scene>_p<ID>.tif``."""
    return Path(root) / season / f"{sensor}_{scene}" / f"{season}_{sensor}_{scene}_p{patch_id}.tif"


def read_split_csv(path: str | Path) -> list[SplitRow]:
    """Parse a split CSV (headerless ``Season,Scene,ID``, or with that header and extra columns).

    Raises:
        DataFileNotFoundError: the file does not exist.
        DatasetError: a malformed row, naming the file, the line and what is wrong.
    """
    path = Path(path)
    if not path.is_file():
        raise DataFileNotFoundError(f"split CSV {path} does not exist")
    rows: list[SplitRow] = []
    with open(path, newline="", encoding="utf-8") as handle:
        for line_number, fields in enumerate(csv.reader(handle), start=1):
            if not fields or all(not f.strip() for f in fields):
                continue
            if line_number == 1 and fields[0].strip().lower() == "season":
                continue  # header of the balanced-classes CSV
            where = f"{path}, line {line_number}"
            if len(fields) < 3:
                raise DatasetError(f"{where}: expected 'Season,Scene,ID', got {','.join(fields)!r}")
            try:
                season = season_folder(fields[0])
            except DatasetError as exc:
                raise DatasetError(f"{where}: {exc}") from None
            try:
                scene, patch_id = int(fields[1]), int(fields[2])
            except ValueError:
                raise DatasetError(f"{where}: scene and ID must be integers, got {fields[1]!r} and {fields[2]!r}") from None
            rows.append(SplitRow(season, scene, patch_id))
    if not rows:
        raise DatasetError(f"split CSV {path} has no rows")
    return rows


def scan_layout(root: str | Path, seasons: Sequence[str], sensor: str = "s1") -> list[SplitRow]:
    """All patches of ``sensor`` found under ``root`` for ``seasons`` (sorted).

    Raises:
        DataFileNotFoundError: a season folder is missing.
    """
    root = Path(root)
    rows: list[SplitRow] = []
    for season in seasons:
        folder = root / season
        if not folder.is_dir():
            raise DataFileNotFoundError(f"season folder {folder} does not exist (root {root})")
        for scene_dir in folder.glob(f"{sensor}_*"):
            for tif in scene_dir.glob("*.tif"):
                match = _PATCH.match(tif.name)
                if match and match["sensor"] == sensor and match["season"] == season:
                    rows.append(SplitRow(season, int(match["scene"]), int(match["id"])))
    return sorted(set(rows), key=lambda r: (r.season, r.scene, r.patch_id))


@dataclass
class SEN12MSOptions(PairOptions):
    """The ``data`` entry for ``kind: sen12ms``.

    Attributes:
        root: the SEN12MS folder (with the season folders).
        split_csv: a split CSV (e.g. ``sen12ms_observations.csv``); ``null``: every patch found
            under ``seasons`` (a directory scan).
        seasons: season folders to scan when there is no CSV.
        with_lc: also return the MODIS IGBP map (band 1 of ``lc``) as ``lc``.
        check_files: verify at start that every S1/S2(/lc) file exists (one stat per file;
            errors list what is missing). Missing files are also reported when read.
    """

    root: str = ""
    split_csv: str | None = None
    seasons: tuple[str, ...] = SEN12MS_SEASONS
    with_lc: bool = False
    check_files: bool = True


class SEN12MSDataset(FileListDataset):
    """SEN12MS S1/S2(/lc) triplets; ``__getitem__`` returns the sample dict of :mod:`.common`."""

    def __init__(self, options: SEN12MSOptions):
        root = Path(options.root)
        if not root.is_dir():
            raise DataFileNotFoundError(f"SEN12MS root folder {root} does not exist")
        if options.split_csv:
            rows = read_split_csv(options.split_csv)
        else:
            rows = scan_layout(root, [season_folder(s) for s in options.seasons])
        samples = [self._files(root, row, options.with_lc) for row in rows]
        super().__init__(samples, options, name=f"SEN12MS ({root})", check_files=options.check_files)
        self.rows = rows

    @staticmethod
    def _files(root: Path, row: SplitRow, with_lc: bool) -> SampleFiles:
        labels = {"lc": (patch_path(root, row.season, "lc", row.scene, row.patch_id), 1)} if with_lc else {}
        return SampleFiles(
            row.sample_id,
            patch_path(root, row.season, "s1", row.scene, row.patch_id),
            patch_path(root, row.season, "s2", row.scene, row.patch_id),
            labels,
        )
