"""Task models export with a dynamic batch, height and width (issue 11, point 14): classifiers pool
through the backbone's own read-out (models.towers.tower_output), and Swin stages trace through the
shape-generic forward of models.swin_graph, so no size is pinned to the traced example."""

from __future__ import annotations

import pytest
import torch
from conftest import tiny_config

from s1s2_encoders import S1S2Classifier, S1S2Segmenter, task_config
from s1s2_encoders.export import _size_oblivious

pytestmark = pytest.mark.usefixtures("one_torch_thread")

SIZES = [(1, 50, 77), (3, 64, 64), (2, 100, 33)]  # none of them the traced size


def _task_model(arch: str, task: str) -> torch.nn.Module:
    torch.manual_seed(0)
    if task == "classification":
        return S1S2Classifier(task_config(tiny_config(arch), task)).eval()
    decoder = {"channels": [16, 8, 8]} if arch == "resnet18" else {}
    return S1S2Segmenter(task_config(tiny_config(arch), task, decoder=decoder)).eval()


def _raw(batch: int, h: int, w: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return -25 + 20 * torch.rand(batch, 2, h, w, generator=g), 3000 * torch.rand(batch, 13, h, w, generator=g)


def check_dynamic_export(model: torch.nn.Module, task: str) -> None:
    from torch.export import Dim

    b, h, w = Dim("batch", min=1, max=1024), Dim("h", min=33, max=8192), Dim("w", min=33, max=8192)
    spec = {0: b, 2: h, 3: w}
    with _size_oblivious():
        program = torch.export.export(model, _raw(2, 64, 96, seed=0), dynamic_shapes={"s1": spec, "s2": spec})
    exported = program.module()
    for seed, (batch, height, width) in enumerate(SIZES, start=1):
        s1, s2 = _raw(batch, height, width, seed)
        with torch.no_grad():
            expected, got = model(s1, s2), exported(s1, s2)
        shape = (batch, model.num_classes) if task == "classification" else (batch, model.num_classes, height, width)
        assert got.shape == expected.shape == shape
        torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("arch, task", [("resnet18", "classification"), ("resnet18", "segmentation"),
                                        ("swin-t", "classification")])
def test_task_models_export_with_dynamic_batch_height_and_width(arch, task):
    check_dynamic_export(_task_model(arch, task), task)


@pytest.mark.slow
def test_swin_segmenter_exports_with_dynamic_batch_height_and_width():
    """The SwinUNet decoder's blocks too (about 30 s of tracing on 2 cores)."""
    check_dynamic_export(_task_model("swin-t", "segmentation"), "segmentation")
