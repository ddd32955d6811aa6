"""TerraTorch: the backbones in its registry, dict inputs with TerraMind's modality names, feature
lists with out_channels, pretrained weights from a checkpoint folder, a training step of its
SemanticSegmentationTask, and the example configuration through its command line.

TerraTorch takes ~20 s to import, so it is imported once, by a module fixture (nothing here is
imported when these tests are deselected)."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
import torch
import yaml

from conftest import REPO, terramesh_pair, tiny_config
from s1s2_encoders import ConfigError, InputShapeError, S2_L2A_BANDS, load_backbone

pytestmark = pytest.mark.usefixtures("one_torch_thread")
CONFIG = REPO / "examples" / "terratorch" / "terramesh_lulc.yaml"
DECODER = {"decoder": "UNetDecoder", "decoder_channels": [64, 32, 16, 8]}


@pytest.fixture(scope="module")
def tt():
    before = torch.get_float32_matmul_precision()
    import s1s2_encoders.terratorch as module

    # TerraTorch sets "medium" on import; the integration puts the caller's setting back.
    assert torch.get_float32_matmul_precision() == before
    return module


@pytest.fixture(scope="module")
def batch():
    """Two real 64 x 64 TerraMesh crops: S1 RTC in dB, S2 L1C with the +1000 offset."""
    pairs = [terramesh_pair(sample) for sample in ("282D_485L_3_3", "38D_378R_2_3")]
    s1 = torch.from_numpy(np.stack([p[0][:, :64, :64] for p in pairs]).astype(np.float32))
    s2 = torch.from_numpy(np.stack([p[1][:, 16:80, 16:80] for p in pairs]).astype(np.float32))
    return s1, s2


def test_backbones_are_registered(tt):
    from terratorch.registry import BACKBONE_REGISTRY, TERRATORCH_BACKBONE_REGISTRY

    for name in ("s1s2_swin", "s1s2_resnet50", "s1s2_resnet18"):
        assert name in TERRATORCH_BACKBONE_REGISTRY and name in BACKBONE_REGISTRY
    backbone = BACKBONE_REGISTRY.build("s1s2_swin", pretrained=False)
    assert isinstance(backbone, tt.S1S2TerraTorchBackbone) and backbone.backbone.config.architecture == "swin-t"
    assert backbone.out_channels == [192, 384, 768, 1536] and backbone.training


def test_encoder_decoder_factory_segmentation_on_a_dict_batch(tt, batch):
    from terratorch.models import EncoderDecoderFactory

    s1, s2 = batch
    model = EncoderDecoderFactory().build_model(
        task="segmentation", backbone="s1s2_resnet18", backbone_pretrained=False, backbone_s2_offset=1000,
        num_classes=10, **DECODER,
    ).eval()
    assert model.encoder.out_channels == [128, 256, 512, 1024]
    with torch.no_grad():
        out = model({"S2L1C": s2, "S1RTC": s1}).output
        features = model.encoder({"S2L1C": s2, "S1RTC": s1})
    assert out.shape == (2, 10, 64, 64) and torch.isfinite(out).all()
    # The features are this package's dense embeddings: band rules, offset and normalisation inside.
    dense = model.encoder.backbone.embed_dense(s1, s2, s2_offset=1000, dtype="float32")
    assert [tuple(f.shape) for f in features] == [(2, c, 64 // s, 64 // s) for c, s in zip([128, 256, 512, 1024], [4, 8, 16, 32])]
    for level, stride in zip(features, (4, 8, 16, 32)):
        torch.testing.assert_close(level, dense[stride], atol=1e-5, rtol=1e-5)


def test_modality_keys_and_single_modality_inputs(tt, batch):
    s1, s2 = batch
    both = tt.s1s2_resnet18(pretrained=False, s2_offset=1000).eval()
    with torch.no_grad():
        grd = both({"S1GRD": s1, "S2": s2})  # plain and TerraMind names find the same towers
        rtc = both({"S1RTC": s1, "S2L1C": s2, "DEM": s1[:, :1]})  # other modalities are left alone
    for a, b in zip(grd, rtc):
        torch.testing.assert_close(a, b)
    with pytest.raises(InputShapeError, match="the batch has no S1 input: expected key S1 / S1GRD / S1RTC, got keys S2L1C"):
        both({"S2L1C": s2})
    with pytest.raises(InputShapeError, match=r"several S2 inputs \(S2, S2L1C\); choose one with backbone_modalities"):
        both({"S1": s1, "S2": s2, "S2L1C": s2})
    with pytest.raises(InputShapeError, match="takes a dict of modalities"):
        both(s2)

    l2a = torch.cat([s2[:, :10], s2[:, 11:]], dim=1)  # the 12 L2A bands: no B10
    only = tt.s1s2_resnet18(pretrained=False, modalities=["S2L2A"], s2_offset=1000).eval()
    assert only.out_channels == [64, 128, 256, 512]
    with torch.no_grad(), pytest.warns(UserWarning, match="B10 missing"):
        features = only({"S2L2A": l2a})
    with torch.no_grad(), pytest.warns(UserWarning, match="B10 missing"):
        expected = only.backbone.embed_dense(s2=l2a, s2_bands=S2_L2A_BANDS, s2_offset=1000, dtype="float32")
    torch.testing.assert_close(features[-1], expected[32], atol=1e-5, rtol=1e-5)
    with torch.no_grad(), pytest.warns(UserWarning, match="B10 missing"):
        torch.testing.assert_close(only(l2a)[-1], features[-1])  # a tensor is that one modality
    with pytest.raises(ConfigError, match="unknown modality key 'S3'"):
        tt.s1s2_resnet18(pretrained=False, modalities=["S3"])
    with pytest.raises(ConfigError, match="'S2L1C' and 'S2L2A' are both S2"):
        tt.s1s2_resnet18(pretrained=False, modalities=["S2L1C", "S2L2A"])


def test_units_and_nodata_rules_apply(tt, batch):
    from s1s2_encoders import InvalidValueError, UnitsError

    s1, s2 = batch
    backbone = tt.s1s2_resnet18(pretrained=False, s2_offset=1000).eval()
    with pytest.raises(UnitsError, match="linear power"):
        backbone({"S1RTC": 10 ** (s1 / 10), "S2L1C": s2})
    holes = s1.clone()
    holes[:, :, :8, :8] = float("nan")
    with pytest.raises(InvalidValueError, match="NaN/inf"):
        backbone({"S1RTC": holes, "S2L1C": s2})
    masked = tt.s1s2_resnet18(pretrained=False, s2_offset=1000, nodata="mask").eval()
    with torch.no_grad():
        features = masked({"S1RTC": holes, "S2L1C": s2})
    assert all(torch.isfinite(f).all() for f in features)
    assert (features[0][:, :64, :2, :2] == 0).all()  # S1 cells without a valid pixel are 0, S2 ones are not
    assert features[0][:, 64:, :2, :2].abs().sum() > 0


def test_pretrained_weights_come_from_a_checkpoint_folder(tt, tmp_path, batch):
    torch.manual_seed(3)
    saved = load_backbone(tiny_config("resnet18", "fixed"))
    saved.save_pretrained(tmp_path / "ckpt")
    backbone = tt.s1s2_resnet18(pretrained=True, ckpt_path=str(tmp_path / "ckpt"))
    for key, value in saved.state_dict().items():
        torch.testing.assert_close(backbone.backbone.state_dict()[key], value, rtol=0, atol=0)
    assert backbone.out_channels == [2 * c for c in saved.pyramid_channels["s1"]]
    random = tt.s1s2_resnet18(pretrained="false", ckpt_path=str(tmp_path / "ckpt"))  # a command-line string
    assert not torch.equal(random.backbone.s1.conv1.weight, saved.s1.conv1.weight)
    with pytest.raises(ConfigError, match="s1s2_swin is a swin-t backbone but .*ckpt holds a resnet18 model; use s1s2_resnet18"):
        tt.s1s2_swin(pretrained=True, ckpt_path=str(tmp_path / "ckpt"))
    with pytest.raises(ConfigError, match="backbone_pretrained must be true or false, got 'yes'"):
        tt.s1s2_resnet18(pretrained="yes")


def test_semantic_segmentation_task_takes_an_optimisation_step(tt, batch):
    from terratorch.tasks import SemanticSegmentationTask

    s1, s2 = batch
    task = SemanticSegmentationTask(
        model_factory="EncoderDecoderFactory", loss="ce", lr=1e-3, ignore_index=-1,
        model_args={"backbone": "s1s2_resnet18", "backbone_pretrained": False, "backbone_s2_offset": 1000,
                    "num_classes": 10, **DECODER},
    )
    mask = torch.from_numpy(np.stack([terramesh_pair(s)[0][0, :64, :64] > -12 for s in ("282D_485L_3_3", "38D_378R_2_3")])).long()
    optimizer = task.configure_optimizers()["optimizer"]
    before = {k: v.detach().clone() for k, v in task.model.encoder.named_parameters()}
    task.train()
    loss = task.training_step({"image": {"S2L1C": s2, "S1RTC": s1}, "mask": mask, "filename": ["a", "b"]}, 0)
    assert loss.ndim == 0 and torch.isfinite(loss) and loss.requires_grad
    optimizer.zero_grad()
    loss.backward()
    assert task.model.encoder.backbone.s1.conv1.weight.grad.abs().sum() > 0  # gradients reach both towers
    assert task.model.encoder.backbone.s2.conv1.weight.grad.abs().sum() > 0
    params = dict(task.model.encoder.named_parameters())
    assert all(v.grad is not None for v in params.values())  # autograd reaches every backbone weight
    # timm's ResNet blocks start with their last BatchNorm scaled to 0 (zero_init_last), so on the first
    # step only the parameters outside the residual branches get a non-zero gradient.
    moving = {k for k, v in params.items() if v.grad.abs().sum() > 0}
    optimizer.step()
    changed = {k for k, v in params.items() if not torch.equal(v, before[k])}
    assert changed == moving and {"backbone.s1.layer4.1.bn2.weight", "backbone.s2.layer4.1.bn2.weight"} <= changed


def _config_for_one_step(tmp_path, **model_args) -> str:
    """The example configuration, unchanged but for one step, no validation or checkpoints, random weights."""
    config = yaml.safe_load(CONFIG.read_text(encoding="utf-8"))
    config["trainer"].update(max_steps=1, limit_val_batches=0, num_sanity_val_steps=0, enable_checkpointing=False,
                             enable_progress_bar=False, enable_model_summary=False, accelerator="cpu",
                             default_root_dir=str(tmp_path))
    config["model"]["init_args"]["model_args"].update(backbone_pretrained=False, **model_args)
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    return str(path)


def test_example_configuration_trains_one_step_through_terratorchs_cli(tt, tmp_path, monkeypatch):
    """``terratorch fit -c examples/terratorch/terramesh_lulc.yaml`` as TerraTorch's command line runs it
    (in this process: TerraTorch is imported already), with a small backbone and decoder to keep it fast."""
    from terratorch.cli_tools import build_lightning_cli

    monkeypatch.chdir(REPO)  # custom_modules_path and the data roots are relative to the repository
    monkeypatch.setattr(os, "environ", dict(os.environ))  # the CLI sets GDAL/AWS variables for the process
    config = _config_for_one_step(tmp_path, backbone="s1s2_resnet18", decoder_channels=[64, 32, 16, 8])
    cli = build_lightning_cli(["fit", "-c", config])
    assert cli.trainer.global_step == 1
    assert torch.isfinite(cli.trainer.callback_metrics["train/loss"])
    assert isinstance(cli.model.model.encoder, tt.S1S2TerraTorchBackbone) and cli.model.model.encoder.training
    assert cli.model.model.encoder.s2_offset == 1000.0 and cli.model.model.encoder.nodata == "mask"


@pytest.mark.slow
def test_terratorch_fit_command_runs_the_example_configuration(tmp_path):
    """The ``terratorch`` console script with the example as shipped (dual Swin-T), one step."""
    config = _config_for_one_step(tmp_path)
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    script = os.path.join(os.path.dirname(sys.executable), "terratorch")
    result = subprocess.run([script, "fit", "-c", config], cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-4000:]
    assert "`Trainer.fit` stopped: `max_steps=1` reached." in result.stderr + result.stdout
