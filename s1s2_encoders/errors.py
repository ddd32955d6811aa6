"""Exceptions raised by s1s2_encoders.

Every error subclasses both :class:`S1S2Error` (catch everything from this package) and the
built-in exception a user would expect (``ValueError`` for bad input, ``FileNotFoundError`` for a
missing checkpoint, ...), so ``except ValueError`` keeps working.
"""

from __future__ import annotations


class S1S2Error(Exception):
    """Base class of all errors raised by s1s2_encoders."""


class BandError(S1S2Error, ValueError):
    """Band names or channel counts do not match what the model expects."""


class InputShapeError(S1S2Error, ValueError):
    """An input array has the wrong rank, dtype or size, or S1 and S2 do not match."""


class InvalidValueError(S1S2Error, ValueError):
    """An input contains NaN or infinite values and no nodata handling was asked for."""


class UnitsError(S1S2Error, ValueError):
    """Input values look like the wrong units (S2 scaled to 0-1, S1 in linear power instead of dB)."""


class ConfigError(S1S2Error, ValueError):
    """A model config (config.json) is malformed or inconsistent."""


class CheckpointError(S1S2Error, ValueError):
    """A weights file does not match the architecture (missing / unexpected / mis-shaped keys)."""


class ChecksumError(S1S2Error, OSError):
    """A downloaded file's sha256 differs from the one recorded for it."""


class ModelNotFoundError(S1S2Error, FileNotFoundError):
    """A model name, folder or hub repository could not be found."""


class ModelNotCachedError(S1S2Error, FileNotFoundError):
    """Offline mode is on and the requested model is not in the local cache."""


class WeightsNotAvailableError(S1S2Error, RuntimeError):
    """A registry entry has no published weights: neither a Hub pin nor an original checkpoint to fetch."""


class DownloadError(S1S2Error, OSError):
    """A download failed (server error, truncated transfer, ...)."""


class DriveDownloadError(DownloadError):
    """Fetching an original checkpoint from Google Drive failed; nothing was cached.

    Attributes:
        cause: what happened, one of :data:`s1s2_encoders.gdrive.CAUSES` (``"quota"``, ``"access"``,
            ``"removed"``, ``"not-found"``, ``"html"``, ``"http-error"``, ``"truncated"``,
            ``"connection-broken"``, ``"timeout"``, ``"connect"``).
        url: the URL that was being fetched.
    """

    def __init__(self, message: str, *, cause: str, url: str | None = None):
        super().__init__(message)
        self.cause = cause
        self.url = url

    def __str__(self) -> str:  # OSError would format several arguments as a tuple
        return str(self.args[0])

    def __reduce__(self):  # keep cause / url across pickling (multiprocessing workers)
        return (_rebuild_drive_error, (self.args[0], self.cause, self.url))


def _rebuild_drive_error(message: str, cause: str, url: str | None) -> "DriveDownloadError":
    return DriveDownloadError(message, cause=cause, url=url)


class PublishError(S1S2Error, OSError):
    """Uploading a checkpoint folder to the Hub failed (not authorised, server error, ...)."""


class DatasetError(S1S2Error, ValueError):
    """A training dataset is malformed: a bad split-CSV row, mismatched S1/S2 files, too many NaN samples."""


class DataFileNotFoundError(S1S2Error, FileNotFoundError):
    """A file or folder that a training dataset needs does not exist (the message names it)."""


class GridMismatchError(S1S2Error, ValueError):
    """Rasters that must share a pixel grid (CRS, transform, size) do not."""


class RasterReadError(S1S2Error, OSError):
    """A raster file is missing, unreadable, or not what it should be (band count, band names)."""


class OutputExistsError(S1S2Error, FileExistsError):
    """An output file exists already and overwriting was not asked for."""


class OptionError(S1S2Error, ValueError):
    """An option has an invalid value: of an input (nodata policy, s2_offset, check_units, band-name
    arguments), of a whole-scene run (tile size, overlap, stride, format ...) or of a download
    (expected_sha256, timeout)."""


class ExportError(S1S2Error, RuntimeError):
    """Exporting a model (ONNX, torch.export) failed, or an exported file lacks its metadata."""
