"""Logging for training runs: stdout lines, a JSONL file and a progress bar; no external service.

Only rank 0 writes. Each JSONL line is one JSON object with at least ``event`` and ``time`` (UNIX
seconds); training steps have ``event: "train"``, ``step``, ``epoch`` and the metrics. The file
is appended to, so a resumed run continues the same log.
"""

from __future__ import annotations

import json
import math
import sys
import time
from pathlib import Path
from typing import Any, TextIO

try:  # tqdm is in the `train` extra; without it the log lines alone show progress
    from tqdm import tqdm
except ImportError:  # pragma: no cover - exercised only without the extra
    tqdm = None  # type: ignore[assignment]


def _json_safe(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    return value


def format_metrics(metrics: dict[str, Any]) -> str:
    parts = []
    for key, value in metrics.items():
        if isinstance(value, float):
            parts.append(f"{key} {value:.4g}")
        else:
            parts.append(f"{key} {value}")
    return "  ".join(parts)


class RunLogger:
    """Writes ``<run_dir>/log.jsonl`` and prints to stdout (rank 0 only).

    Args:
        run_dir: folder of the run (created).
        enabled: False on ranks other than 0.
        progress: show a tqdm bar (only when stdout is a terminal, or when forced with ``"always"``).
        stream: where lines are printed.
    """

    def __init__(self, run_dir: str | Path, enabled: bool = True, progress: bool | str = True, stream: TextIO | None = None):
        self.enabled = enabled
        self.run_dir = Path(run_dir)
        self.stream = stream or sys.stdout
        self.path = self.run_dir / "log.jsonl"
        self._bar = None
        self._progress = progress
        if enabled:
            self.run_dir.mkdir(parents=True, exist_ok=True)

    def start_progress(self, total: int, initial: int) -> None:
        if not self.enabled or tqdm is None or not self._progress:
            return
        if self._progress != "always" and not (hasattr(self.stream, "isatty") and self.stream.isatty()):
            return
        self._bar = tqdm(total=total, initial=initial, file=self.stream, dynamic_ncols=True, unit="step")

    def advance(self, n: int = 1, postfix: dict[str, Any] | None = None) -> None:
        if self._bar is not None:
            self._bar.update(n)
            if postfix:
                self._bar.set_postfix({k: (f"{v:.4g}" if isinstance(v, float) else v) for k, v in postfix.items()}, refresh=False)

    def close_progress(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def print(self, text: str) -> None:
        if not self.enabled:
            return
        if self._bar is not None:
            self._bar.write(text, file=self.stream)
        else:
            print(text, file=self.stream, flush=True)

    def log(self, event: str, echo: bool = True, **fields: Any) -> None:
        """Append one JSON line (and print it unless ``echo`` is False)."""
        if not self.enabled:
            return
        record = {"event": event, "time": round(time.time(), 3), **fields}
        with open(self.path, "a", encoding="utf-8") as handle:
            handle.write(json.dumps(_json_safe(record)) + "\n")
        if echo:
            shown = {k: v for k, v in fields.items() if not isinstance(v, (dict, list))}
            self.print(f"[{event}] {format_metrics(shown)}")


def read_jsonl(path: str | Path) -> list[dict[str, Any]]:
    """All records of a JSONL log."""
    with open(path, encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]
