"""Every dense cell sits where its receptive field is centred, measured from the models themselves, and
the georeferencing of ``s1s2 embed`` puts it there (issue 11, point 3).

The measurement: the gradient of one cell of a tower's stride-``s`` map with respect to the input, taken
over a batch of random inputs, is non-zero exactly on the cell's receptive field; the middle of that
support is where the cell is centred. ResNet towers are measured as they are (random weights, every
BatchNorm scale made non-zero so each residual branch takes part: timm initialises the last one of a
block to zero). For Swin the window attention and the MLP mix a cell with every other cell of its
window, so its support is the window; what a Swin cell *is* is its own patch (the residual stream, as
4 x 4 patchify and 2 x 2 patch merging build it), measured with the attention and MLP outputs zeroed.
"""

from __future__ import annotations

import numpy as np
import pytest
import rasterio
import torch
from conftest import tiny_model
from geo_helpers import read, write_scene

from s1s2_encoders import load_backbone
from s1s2_encoders.geo import SceneInputs, embed_scene
from s1s2_encoders.models.towers import PYRAMID_STRIDES, cell_centre, cell_origin_shift, tower_output

SIZE = 320  # every measured cell's receptive field lies inside the image for the tiny towers


def _measurable(model: torch.nn.Module) -> torch.nn.Module:
    """The tower whose gradient support is the cells' footprint (see the module docstring)."""
    tower = model.s2
    with torch.no_grad():
        for module in tower.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.weight.uniform_(0.5, 1.5)
            if type(module).__name__ == "SwinTransformerBlock":
                for linear in (module.attn.proj, module.mlp.fc2):
                    linear.weight.zero_()
                    linear.bias.zero_()
    return tower.eval()


def measured_centres(model, cells: dict[int, list[tuple[int, int]]], size: int = SIZE) -> dict[int, list[tuple[float, float]]]:
    """(row, col) centre of each cell's gradient support per stride, in continuous pixel coordinates
    (pixel k spans [k, k + 1)); one forward pass for every stride."""
    tower = _measurable(model)
    generator = torch.Generator().manual_seed(0)
    x = torch.rand(2, len(model.config.s2_bands), size, size, generator=generator, requires_grad=True)
    pyramid = tower_output(tower, model.config.architecture, x, dense=True).pyramid
    centres: dict[int, list[tuple[float, float]]] = {}
    for stride, wanted in cells.items():
        level = pyramid[PYRAMID_STRIDES.index(stride)]
        # A random read-out of the channels: their plain sum after a LayerNorm has zero gradient.
        readout = torch.randn(level.shape[1], generator=generator)
        centres[stride] = []
        for i, j in wanted:
            (grad,) = torch.autograd.grad((level[:, :, i, j] * readout).sum(), x, retain_graph=True)
            support = grad.abs().sum(dim=(0, 1)) > 0
            rows = torch.nonzero(support.any(dim=1)).flatten()
            cols = torch.nonzero(support.any(dim=0)).flatten()
            centres[stride].append(((rows[0] + rows[-1] + 1).item() / 2, (cols[0] + cols[-1] + 1).item() / 2))
    return centres


@pytest.mark.parametrize("arch", ["swin-t", "resnet18", "resnet50"])
def test_each_cell_is_centred_where_the_model_says(arch):
    model = tiny_model(arch)
    cells = {s: [(SIZE // 2 // s, SIZE // 2 // s), (SIZE // 2 // s + 1, SIZE // 2 // s - 1)] for s in PYRAMID_STRIDES}
    for stride, centres in measured_centres(model, cells).items():
        for (i, j), (row, col) in zip(cells[stride], centres):
            expected_row = stride * i + cell_centre(arch, stride)
            expected_col = stride * j + cell_centre(arch, stride)
            assert abs(row - expected_row) <= 1 and abs(col - expected_col) <= 1, (arch, stride, (i, j), (row, col))
        if arch == "swin-t":
            assert cell_origin_shift(arch, stride) == 0  # exact: the cell is the patch [s*i, s*(i+1))
        else:
            assert cell_origin_shift(arch, stride) == 0.5 - stride / 2  # 15.5 px before the patch at stride 32


@pytest.mark.parametrize("arch, stride", [("resnet18", 32), ("resnet18", 8), ("swin-t", 32), ("swin-t", 4)])
def test_the_embedding_geotiff_puts_each_cell_on_its_centre(arch, stride, tmp_path):
    """Output pixel (i, j) of the GeoTIFF is centred on input position ``stride * (i, j) + cell_centre``
    (which the test above measures), within 1 px: 15.5 px up and left of the patch middle for ResNet
    at stride 32, on the patch middle for Swin."""
    s1_path, s2_path = write_scene(tmp_path, 96, 128)
    out = tmp_path / "emb.tif"
    embed_scene(tiny_model(arch, normalization="fixed"), SceneInputs(s1=[s1_path], s2=[s2_path]), out, stride=stride,
                tile=96 if stride > 4 else 64, overlap=32, progress=False, dtype="float32")
    with rasterio.open(s2_path) as src:
        pixel_to_world = src.transform
    _, meta = read(out)
    assert float(meta["tags"]["S1S2_CELL_ORIGIN_SHIFT_PX"]) == cell_origin_shift(arch, stride)
    for i, j in [(0, 0), (1, 2), (2, 3)]:
        x_cell, y_cell = meta["transform"] * (j + 0.5, i + 0.5)  # the middle of output pixel (i, j)
        x_field, y_field = pixel_to_world * (stride * j + cell_centre(arch, stride), stride * i + cell_centre(arch, stride))
        assert abs(x_cell - x_field) <= 1e-6 and abs(y_cell - y_field) <= 1e-6
    if arch.startswith("resnet") and stride == 32:
        assert meta["transform"].c == pixel_to_world.c - 15.5 * 10  # 155 m west of the input's corner


@pytest.mark.slow
@pytest.mark.parametrize("name", ["resnet50-s1s2", "resnet18-s1s2", "swin-s1s2"])
def test_real_size_towers_are_centred_where_the_model_says(name):
    torch.manual_seed(0)
    model = load_backbone(name, pretrained=False)
    size = 960 if "resnet" in name else 224
    middle = size // 2 // 32
    (row, col), = measured_centres(model, {32: [(middle, middle)]}, size=size)[32]
    expected = 32 * middle + cell_centre(model.config.architecture, 32)
    assert abs(row - expected) <= 1 and abs(col - expected) <= 1
    assert np.isfinite([row, col]).all()
