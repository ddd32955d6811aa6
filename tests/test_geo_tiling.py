"""Tile layout, blending weights, the row blender and the progress line (no model, no files)."""

from __future__ import annotations

import io

import numpy as np
import pytest

from s1s2_encoders.geo.blend import RowBlender
from s1s2_encoders.geo.progress import Progress, format_duration
from s1s2_encoders.geo.tiling import Tile, TilePlan, blend_weights, tile_starts


@pytest.mark.parametrize("size", [1, 31, 224, 225, 300, 1000, 10980])
@pytest.mark.parametrize("tile,overlap", [(128, 32), (448, 64), (256, 0)])
def test_tiles_cover_the_scene_aligned_to_32(size, tile, overlap):
    plan = TilePlan.dense(size, size, tile, overlap, stride=16)
    starts = plan.ys
    assert all(s % 32 == 0 for s in starts)
    assert starts[0] == 0 and list(starts) == sorted(set(starts))
    # Every pixel is covered, and the last tile sticks out by less than 32 pixels.
    covered = np.zeros(size, bool)
    for s in starts:
        covered[s: s + plan.tile_h] = True
    assert covered.all()
    assert starts[-1] + plan.tile_h - size < 32
    # Consecutive tiles overlap by at least the requested overlap (more only at the last tile).
    for a, b in zip(starts, starts[1:-1]):
        assert b - a == tile - overlap
    assert plan.out_height == -(-size // 16)


def test_small_scenes_use_one_tile_shrunk_to_a_multiple_of_32():
    plan = TilePlan.dense(100, 70, 448, 64, stride=32)
    assert (plan.tile_h, plan.tile_w, plan.ys, plan.xs) == (128, 96, (0,), (0,))
    assert plan.n_tiles == 1 and (plan.out_height, plan.out_width) == (4, 3)


def test_tile_starts_last_tile_pulled_back():
    assert tile_starts(300, 128, 96) == [0, 96, 192]
    assert tile_starts(1000, 448, 384) == [0, 384, 576]


def test_invalid_tiling_options_are_refused():
    with pytest.raises(ValueError, match="tile must be a positive multiple of 32"):
        TilePlan.dense(100, 100, 100, 0, 32)
    with pytest.raises(ValueError, match="overlap must be a multiple of 32 pixels in \\[0, tile\\)"):
        TilePlan.dense(100, 100, 128, 128, 32)
    with pytest.raises(ValueError, match="overlap must be a multiple of 32"):
        TilePlan.dense(100, 100, 128, 20, 32)
    with pytest.raises(ValueError, match="stride must divide 32"):
        TilePlan.dense(100, 100, 128, 0, 3)


def test_pooled_grid_one_cell_per_tile():
    plan = TilePlan.grid(250, 130, 120)
    assert plan.ys == (0, 120, 240) and plan.xs == (0, 120)
    assert (plan.out_height, plan.out_width, plan.tile_cells) == (3, 2, (1, 1))


def test_blend_weights_are_smooth_positive_and_symmetric():
    w = blend_weights(28, 4)
    assert w.min() > 0 and np.allclose(w, w[::-1])
    assert np.all(w[4:-4] == 1) and np.all(np.diff(w[:5]) > 0)
    assert blend_weights(10, 0).tolist() == [1.0] * 10


def test_row_blender_averages_overlaps_with_the_tile_weights():
    # Two tiles side by side overlapping by 2 cells: constant 1 and constant 3.
    plan = TilePlan.dense(32, 224, 128, 32, stride=16)  # tiles at x = 0 and 96: cells 0-7 and 6-13
    assert plan.xs == (0, 96)
    blender = RowBlender(plan, channels=2)
    blender.add(Tile(0, 0, 0), np.ones((2, 2, 8), np.float32))
    blender.add(Tile(0, 0, 96), np.full((2, 2, 8), 3.0, np.float32))
    row0, out = blender.pop(plan.out_height)
    assert row0 == 0 and out.shape == (2, 2, 14)
    np.testing.assert_allclose(out[:, :, :6], 1, rtol=1e-6)
    np.testing.assert_allclose(out[:, :, 8:], 3, rtol=1e-6)
    overlap = out[0, 0, 6:8]
    assert overlap[0] < overlap[1] and overlap.min() > 1 and overlap.max() < 3  # a smooth fade
    w = blend_weights(8, 2)  # a ramp over the 2 overlapping cells
    expected = (w[6:] * 1 + w[:2] * 3) / (w[6:] + w[:2])
    np.testing.assert_allclose(overlap, expected, rtol=1e-6)


def test_row_blender_keeps_nodata_per_channel_group():
    plan = TilePlan.dense(64, 64, 64, 0, stride=32)
    blender = RowBlender(plan, channels=3, groups=[(0, 1), (1, 3)])
    values = np.ones((3, 2, 2), np.float32)
    values[1:, 0, 0] = np.nan  # the second modality saw nothing in cell (0, 0)
    blender.add(Tile(0, 0, 0), values)
    _, out = blender.pop(plan.out_height)
    assert out[0, 0, 0] == 1
    assert np.isnan(out[1:, 0, 0]).all() and np.all(out[1:, 1, 1] == 1)


def test_row_blender_hands_out_whole_blocks_and_holds_one_tile_row():
    plan = TilePlan.dense(2000, 200, 256, 64, stride=4)  # 64 cells per tile, 500 output rows
    blender = RowBlender(plan, channels=1, block_rows=32)
    assert blender.sums.shape == (1, 64 + 32, 50)  # independent of the scene height
    total, seen = 0, []
    for tile in plan.tiles():
        blender.add(tile, np.full((1, 64, 64), tile.row, np.float32))
        if tile.x == plan.xs[-1]:
            got = blender.pop(plan.row_end_cell(tile.row))
            if got is not None:
                row0, rows = got
                assert row0 == total and (row0 % 32 == 0)
                total += rows.shape[1]
                seen.append(rows)
    assert total == 500 and blender.pop(plan.out_height) is None  # the last tile row flushed everything
    stacked = np.concatenate(seen, axis=1)
    assert np.isfinite(stacked).all()
    # Rows covered by a single tile row carry exactly that row's value.
    assert stacked[0, 0, 0] == 0 and stacked[0, 499, 0] == len(plan.ys) - 1


def test_progress_line_reports_rate_and_eta():
    stream = io.StringIO()
    progress = Progress(10, "scene", stream=stream, log_every=0)
    progress.update(5)
    line = stream.getvalue().strip()
    assert line.startswith("scene: 5/10 tiles ( 50%)") and "tiles/s" in line and "ETA" in line
    progress.update(5)
    assert stream.getvalue().strip().splitlines()[-1].startswith("scene: 10/10 tiles (100%)")
    assert format_duration(75) == "1m15s" and format_duration(3725) == "1h02m" and format_duration(float("inf")) == "?"
    quiet = io.StringIO()
    Progress(3, stream=quiet, enabled=False).update(3)
    assert quiet.getvalue() == ""


def test_readme_whole_scenes_section_names_only_real_options():
    import re

    from conftest import REPO
    from s1s2_encoders.cli import build_parser

    readme = (REPO / "README.md").read_text()
    section = readme.split("## Whole scenes", 1)[1].split("\n## ", 1)[0]
    torchrun = {"--nproc_per_node", "--nnodes", "--rdzv_backend", "--rdzv_endpoint"}
    mentioned = set(re.findall(r"(?<![\w-])--[a-z][a-z0-9_-]*", section)) - torchrun
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    known = {opt for name in ("embed", "predict") for action in sub.choices[name]._actions for opt in action.option_strings}
    benchmarks = [(REPO / "benchmarks" / name).read_text() for name in ("scene_memory.py", "output_formats.py", "scene_pipeline.py")]
    known |= {opt for opt in mentioned if any(f'"{opt}"' in text for text in benchmarks)}  # the benchmarks' own options
    assert mentioned and mentioned <= known, sorted(mentioned - known)
    assert {"--align", "--s2-offset", "--resume", "--preview", "--probabilities", "--stride"} <= mentioned
