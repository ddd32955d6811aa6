"""Pixel grids (CRS + affine transform + size) and the check that two rasters share one."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from rasterio.transform import Affine
from rasterio.crs import CRS

from ..errors import GridMismatchError

# Two transforms are the same grid when their origins differ by less than this fraction of a
# pixel and their pixel sizes by less than this relative amount: products written by different
# tools carry floating-point noise in the last digits of UTM coordinates (~1e6 m).
_ORIGIN_TOLERANCE_PX = 1e-3
_SCALE_TOLERANCE = 1e-6


@dataclass(frozen=True)
class Grid:
    """A raster's pixel grid.

    Attributes:
        crs: coordinate reference system (``None`` when the file has none).
        transform: affine pixel -> CRS transform of the pixel corners (GDAL convention).
        width / height: size in pixels.
    """

    crs: CRS | None
    transform: Affine
    width: int
    height: int

    @classmethod
    def of(cls, dataset) -> "Grid":
        """The grid of an open rasterio dataset."""
        return cls(dataset.crs, dataset.transform, dataset.width, dataset.height)

    @property
    def pixel_size(self) -> tuple[float, float]:
        """``(x, y)`` pixel size in CRS units (both positive)."""
        return abs(self.transform.a), abs(self.transform.e)

    @property
    def resolution(self) -> float:
        """The coarser of the two pixel sizes (used to rank per-band files by resolution)."""
        return max(self.pixel_size)

    @property
    def bounds(self) -> tuple[float, float, float, float]:
        """``(left, bottom, right, top)`` in CRS units."""
        t = self.transform
        xs = (t.c, t.c + t.a * self.width)
        ys = (t.f, t.f + t.e * self.height)
        return min(xs), min(ys), max(xs), max(ys)

    def scaled(self, factor: int, origin_shift: float = 0.0) -> "Grid":
        """The grid of cells ``factor`` x ``factor`` pixels wide (size rounded up).

        Args:
            factor: input pixels per cell side.
            origin_shift: input pixels (along rows and columns) from this grid's origin to the first
                cell's upper-left corner: 0 when cell ``i`` covers pixels ``[f*i, f*(i+1))``; negative
                when the cells are centred earlier (ResNet feature maps, see
                :func:`~s1s2_encoders.models.towers.cell_origin_shift`).
        """
        # affine >= 2.4 composes with @ (3.x deprecates * for it); older releases only have *.
        compose = (lambda a, b: a @ b) if hasattr(Affine, "__matmul__") else (lambda a, b: a * b)
        transform = compose(compose(self.transform, Affine.translation(origin_shift, origin_shift)), Affine.scale(factor))
        return Grid(self.crs, transform, -(-self.width // factor), -(-self.height // factor))

    def window_outlines(self, row, col, height, width, densify: int = 8) -> tuple[np.ndarray, np.ndarray]:
        """Outlines of pixel windows in the grid's CRS, densified so that they stay close to the true
        edges once reprojected (:meth:`to_lonlat`).

        Args:
            row / col / height / width: ``(N,)`` (or scalar) pixel windows of this grid.
            densify: points per edge.

        Returns:
            x, y: ``(N, 4 * densify + 1)`` CRS coordinates; each closed ring goes down the left edge, along
            the bottom, up the right and back along the top (counter-clockwise on a north-up map).
        """
        row, col, height, width = (np.atleast_1d(np.asarray(v, dtype=np.float64)) for v in (row, col, height, width))
        t = np.linspace(0.0, 1.0, densify, endpoint=False)
        px = np.concatenate([np.zeros_like(t), t, np.ones_like(t), 1 - t, [0.0]])
        py = np.concatenate([t, np.ones_like(t), 1 - t, np.zeros_like(t), [0.0]])
        cols_px = col[:, None] + px[None] * width[:, None]
        rows_px = row[:, None] + py[None] * height[:, None]
        a = self.transform
        return a.a * cols_px + a.b * rows_px + a.c, a.d * cols_px + a.e * rows_px + a.f

    def to_lonlat(self, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """CRS coordinates -> longitude and latitude (EPSG:4326) in degrees, same shapes."""
        from rasterio.warp import transform as warp_points

        lon, lat = warp_points(self.crs, CRS.from_epsg(4326), np.ravel(x).tolist(), np.ravel(y).tolist())
        return np.asarray(lon).reshape(np.shape(x)), np.asarray(lat).reshape(np.shape(y))

    def describe(self) -> str:
        """One line: CRS, size, pixel size and origin, enough to see why two grids differ."""
        crs = self.crs.to_string() if self.crs is not None else "no CRS"
        units = _units(self.crs)
        px, py = self.pixel_size
        t = self.transform
        rotation = "" if t.b == 0 and t.d == 0 else f", rotated (b={t.b:g}, d={t.d:g})"
        return (
            f"{crs}, {self.width} x {self.height} px, pixel {px:.6g} x {py:.6g} {units}, "
            f"origin ({t.c:.6f}, {t.f:.6f}){rotation}"
        )

    def differences(self, other: "Grid") -> list[str]:
        """What differs between two grids (empty when they are the same grid)."""
        out = []
        if self.crs != other.crs:
            out.append("CRS")
        if (self.width, self.height) != (other.width, other.height):
            out.append("size")
        a, b = self.transform, other.transform
        px = min(self.pixel_size + other.pixel_size) or 1.0
        if any(abs(x - y) > _SCALE_TOLERANCE * max(abs(x), abs(y), 1e-12) for x, y in ((a.a, b.a), (a.e, b.e))) or any(
            abs(x - y) > _SCALE_TOLERANCE * px for x, y in ((a.b, b.b), (a.d, b.d))
        ):
            out.append("pixel size")
        if abs(a.c - b.c) > _ORIGIN_TOLERANCE_PX * px or abs(a.f - b.f) > _ORIGIN_TOLERANCE_PX * px:
            out.append("origin")
        return out

    def same_as(self, other: "Grid") -> bool:
        return not self.differences(other)


def _units(crs: CRS | None) -> str:
    if crs is None:
        return "units"
    if crs.is_geographic:
        return "deg"
    try:
        unit = crs.linear_units
    except Exception:  # pragma: no cover - very old PROJ databases
        unit = None
    return {"metre": "m", "meter": "m", None: "units"}.get(unit, unit or "units")


def check_same_grid(first: tuple[str, str, Grid], second: tuple[str, str, Grid], hint: str = "") -> None:
    """Raise :class:`GridMismatchError` showing both grids when they differ.

    Args:
        first / second: ``(label, path, grid)`` of each raster.
        hint: what the user can do about it (appended to the message).
    """
    (label_a, path_a, grid_a), (label_b, path_b, grid_b) = first, second
    diff = grid_a.differences(grid_b)
    if not diff:
        return
    width = max(len(label_a), len(label_b))
    message = (
        f"{label_a} and {label_b} are not on the same pixel grid (they differ in {', '.join(diff)}):\n"
        f"  {label_a:<{width}}  {path_a}: {grid_a.describe()}\n"
        f"  {label_b:<{width}}  {path_b}: {grid_b.describe()}"
    )
    if hint:
        message += f"\n{hint}"
    raise GridMismatchError(message)
