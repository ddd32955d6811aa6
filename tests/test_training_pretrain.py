"""Pretraining end to end: recipes, the CLI, torchrun with 2 processes vs 1, a killed run resumed,
SimCLR, MMA and Dual-SimCLR + MMA objectives, and export to a folder that load_backbone loads and embeds a real pair with."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import TERRAMESH_IDS, terramesh_pair
from dist_helpers import free_port
from s1s2_encoders import load_backbone
from s1s2_encoders.errors import ConfigError
from training import export, pretrain
from training.checkpoints import latest_checkpoint, list_checkpoints, load_training_checkpoint
from training.run_log import read_jsonl

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "training" / "configs"
TINY = CONFIGS / "tiny.yaml"
# Small and quick: 32 px crops, batch 8, fp32 on CPU.
QUICK = ["--device", "cpu", "--set", "data.crop_size=32", "--set", "train.batch_size=8", "--set", "train.precision=fp32",
         "--set", "train.progress_bar=false", "--set", "train.log_every=1"]


def _env() -> dict[str, str]:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    env.pop("WORLD_SIZE", None)
    return env


def _state(run_dir: Path, step: int) -> dict:
    return load_training_checkpoint(run_dir / "checkpoints" / f"step_{step:08d}.pt")


# ----------------------------------------------------------------------------- recipes
def test_every_recipe_parses_and_builds_its_model_config():
    names = sorted(p.name for p in CONFIGS.glob("*.yaml"))
    assert names == [
        "dual_simclr_resnet18_published.yaml", "dual_simclr_resnet50.yaml", "dual_simclr_resnet50_published.yaml",
        "dual_simclr_swin_t.yaml", "dual_simclr_swin_t_published.yaml", "mma_resnet18.yaml", "simclr_s2_swin_t.yaml",
        "tiny.yaml",
    ]
    for path in CONFIGS.glob("*.yaml"):
        config = pretrain.load_pretrain_config(path)
        assert config.model_config().input_size == config.crop_size
        assert config.recipe.differences, f"{path.name} must say how it differs"
        if "published" in path.name:
            assert config.recipe.faithful_to and config.model.normalization == "sslt_channel_max"
        else:
            assert config.recipe.faithful_to is None and config.model_config().normalization.kind == "fixed"


def test_published_recipes_have_the_published_hyperparameters():
    swin = pretrain.load_pretrain_config(CONFIGS / "dual_simclr_swin_t_published.yaml")
    assert (swin.optimizer.name, swin.optimizer.lr, swin.optimizer.weight_decay) == ("adamw", 5e-4, 0.0)
    assert (swin.train.batch_size, swin.train.epochs, swin.objective.temperature, swin.crop_size) == (50, 300, 0.2, 224)
    assert swin.objective.projection.kind == "none" and swin.model.architecture == "swin-t"
    # As it actually ran: the LR stayed at 5e-7.
    assert swin.schedule.kind == "constant" and swin.optimizer.lr * swin.schedule.factor == pytest.approx(5e-7)
    for arch in ("resnet50", "resnet18"):
        r = pretrain.load_pretrain_config(CONFIGS / f"dual_simclr_{arch}_published.yaml")
        assert (r.model.architecture, r.optimizer.name, r.optimizer.lr, r.optimizer.weight_decay) == (arch, "adam", 3e-5, 1e-4)
        assert (r.train.batch_size, r.objective.temperature, r.crop_size) == (200, 0.07, 128)
        assert r.objective.projection.kind == "mlp" and r.objective.projection.out_dim == 128
        assert r.optimizer.decay_norm_and_bias and r.schedule.kind == "epoch_cosine" and r.schedule.t_max_epochs == 903


def test_recipe_errors_name_the_key(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(TINY.read_text().replace("temperature: 0.2", "temprature: 0.2"), encoding="utf-8")
    with pytest.raises(ConfigError, match=r"bad\.yaml\.objective: unknown key\(s\) \['temprature'\]"):
        pretrain.load_pretrain_config(bad)
    with pytest.raises(ConfigError, match="mma needs complete dense maps"):
        pretrain.load_pretrain_config(CONFIGS / "mma_resnet18.yaml", ["data.nan_policy=mask"])
    with pytest.raises(ConfigError, match="dual_simclr_mma needs complete dense maps"):
        pretrain.load_pretrain_config(CONFIGS / "mma_resnet18.yaml", ["data.nan_policy=mask", "objective.kind=dual_simclr_mma"])
    with pytest.raises(ConfigError, match="objective.mma_weight must be > 0, got 0"):
        pretrain.load_pretrain_config(TINY, ["objective.kind=dual_simclr_mma", "objective.mma_weight=0"])
    with pytest.raises(ConfigError, match="model.normalization 'per_sample' unknown"):
        pretrain.load_pretrain_config(TINY, ["model.normalization=per_sample"])


# ----------------------------------------------------------------------------- CLI, export, embed
def test_tiny_pretraining_exports_a_folder_that_embeds_a_real_pair(tmp_path, capsys):
    run = tmp_path / "run"
    assert pretrain.main(["--config", str(TINY), "--output-dir", str(run), "--max-steps", "3", *QUICK]) == 0
    assert [p.name for p in list_checkpoints(run)] == ["step_00000003.pt"]
    records = read_jsonl(run / "log.jsonl")
    assert [r["step"] for r in records if r["event"] == "train"] == [1, 2, 3]
    assert all(np.isfinite(r["loss"]) for r in records if r["event"] == "train")
    assert (run / "config.yaml").is_file()
    # A second run into the same folder must not silently overwrite it.
    assert pretrain.main(["--config", str(TINY), "--output-dir", str(run), "--max-steps", "3", *QUICK]) == 2
    assert "already has checkpoints" in capsys.readouterr().err

    folder = tmp_path / "export"
    assert export.main([str(run), "-o", str(folder)]) == 0
    assert sorted(p.name for p in folder.iterdir()) == ["README.md", "config.json", "model.safetensors"]
    model = load_backbone(folder)
    state = load_training_checkpoint(run)
    for key, value in model.state_dict().items():
        assert torch.equal(value, state["model"][f"backbone.{key}"]), key  # the trained weights, not new ones
    assert model.config.normalization.kind == "fixed" and model.config.input_size == 32
    assert model.config.provenance["steps"] == 3 and model.config.provenance["recipe"] == "tiny-dual-simclr"
    s1, s2 = terramesh_pair(TERRAMESH_IDS[1])
    emb = model.embed(s1, s2, s2_offset=1000)
    assert emb.shape == (1, 2 * 128) and np.isfinite(emb).all()
    card = (folder / "README.md").read_text()
    assert "## Training" in card and "tiny-dual-simclr" in card and "3 of 3" in card and "paired_folder" in card
    assert export.main([str(run), "-o", str(folder)]) == 2  # exists
    assert "already exists" in capsys.readouterr().err


def test_export_refuses_a_checkpoint_that_is_not_a_pretraining_one(tmp_path, capsys):
    from training.checkpoints import save_training_checkpoint

    save_training_checkpoint(tmp_path / "run", 1, {"model": {"w": torch.zeros(1)}, "extra": {}})
    assert export.main([str(tmp_path / "run"), "-o", str(tmp_path / "out")]) == 2
    assert "does not record a model config" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


# ----------------------------------------------------------------------------- torchrun
def test_torchrun_two_processes_equal_one_process_then_export_and_embed(tmp_path):
    # BatchNorm statistics are per process on CPU (SyncBatchNorm needs GPUs), so the head's
    # BatchNorm is off here; everything else is the tiny recipe, real TerraMesh files included.
    same = [*QUICK, "--max-steps", "1", "--set", "objective.projection.batch_norm=false"]
    one, two = tmp_path / "one", tmp_path / "two"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_addr=127.0.0.1",
           f"--master_port={free_port()}", "-m", "training.pretrain", "--config", str(TINY), "--output-dir", str(two), *same]
    proc = subprocess.run(cmd, cwd=REPO, env=_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert pretrain.main(["--config", str(TINY), "--output-dir", str(one), *same]) == 0
    log_one = [r for r in read_jsonl(one / "log.jsonl") if r["event"] == "train"]
    log_two = [r for r in read_jsonl(two / "log.jsonl") if r["event"] == "train"]
    assert log_two[0]["loss"] == pytest.approx(log_one[0]["loss"], abs=1e-5)
    starts = [r for r in read_jsonl(two / "log.jsonl") if r["event"] == "start"]
    assert starts[0]["world_size"] == 2 and starts[0]["global_batch_size"] == 8
    a, b = _state(one, 1), _state(two, 1)
    assert b["world_size"] == 2 and len(b["rng"]) == 2
    torch.manual_seed(0)
    initial = pretrain.build_model(pretrain.load_pretrain_config(TINY, ["objective.projection.batch_norm=false"])).state_dict()
    moved = 0
    for key, value in a["model"].items():
        assert torch.allclose(b["model"][key], value, atol=1e-5), key
        moved += int(not torch.equal(value, initial[key]))
    assert moved > len(initial) // 2  # parameters really changed in the step being compared

    folder = tmp_path / "export"
    assert export.main([str(two), "-o", str(folder)]) == 0
    model = load_backbone(folder)
    assert model.config.provenance["world_size"] == 2
    s1, s2 = terramesh_pair()
    assert np.isfinite(model.embed(s1, s2, s2_offset=1000)).all()


# ----------------------------------------------------------------------------- kill + resume
def test_killed_run_resumes_to_the_same_weights_as_an_uninterrupted_run(tmp_path):
    # Synthetic data read by a DataLoader worker, drop-path on (torch RNG must be restored).
    args = ["--config", str(TINY), "--max-steps", "16", *QUICK, "--num-workers", "1",
            "--set", "data.datasets=[{kind: synthetic, n_samples: 40, size: 48}]",
            "--set", "model.tower_kwargs={embed_dim: 16, depths: [1, 1, 1, 1], num_heads: [1, 2, 2, 4], drop_path_rate: 0.2}",
            "--set", "train.checkpoint_every=2", "--set", "train.keep_checkpoints=null"]
    base = [sys.executable, "-m", "training.pretrain", *args]
    killed = tmp_path / "killed"
    proc = subprocess.Popen([*base, "--output-dir", str(killed)], cwd=REPO, env=_env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None:
        found = latest_checkpoint(killed)
        if found is not None and found.name >= "step_00000006.pt":
            break
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL, proc.stderr.read()[-2000:]
    stopped_at = load_training_checkpoint(killed)["step"]
    assert 6 <= stopped_at < 16  # killed mid-run, between checkpoints or just after one
    # Resume for real (a new process), and an uninterrupted reference run.
    resumed = subprocess.run([*base, "--output-dir", str(killed), "--resume"], cwd=REPO, env=_env(), capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    reference = tmp_path / "reference"
    full = subprocess.run([*base, "--output-dir", str(reference)], cwd=REPO, env=_env(), capture_output=True, text=True, timeout=300)
    assert full.returncode == 0, full.stderr[-3000:]
    a, b = _state(reference, 16), _state(killed, 16)
    assert a["model"].keys() == b["model"].keys()
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key
    for group_a, group_b in zip(a["optimizer"]["state"].values(), b["optimizer"]["state"].values()):
        assert torch.equal(group_a["exp_avg"], group_b["exp_avg"])
    events = [r["event"] for r in read_jsonl(killed / "log.jsonl")]
    assert events.count("start") == 2 and "resume" in events


# ----------------------------------------------------------------------------- other objectives
@pytest.mark.parametrize("objective", ["simclr", "mma", "dual_simclr_mma"])
def test_simclr_and_mma_objectives_train(tmp_path, objective):
    overrides = ["data.crop_size=32", "train.batch_size=8", "train.max_steps=2", "train.precision=fp32", "train.log_every=1",
                 "train.progress_bar=false", "train.device=cpu", "data.datasets=[{kind: synthetic, n_samples: 16, size: 40}]",
                 f"objective.kind={objective}"]
    if objective == "simclr":
        overrides += ["objective.simclr_modalities=[s2]", "data.augment={crop_scale: [0.5, 1.0]}"]
    elif objective == "mma":
        overrides += ["objective.projection.kind=none", "objective.mma_strides=[8, 32]"]
    else:  # the pooled embeddings keep the recipe's projection head; the dense maps are never projected
        overrides += ["objective.mma_strides=[8, 16]"]
    config = pretrain.load_pretrain_config(TINY, overrides)
    result = pretrain.run_pretraining(config, output_dir=tmp_path)
    assert result.finished and np.isfinite(result.metrics["loss"])
    torch.manual_seed(0)
    initial = pretrain.build_model(config).state_dict()
    trained = load_training_checkpoint(tmp_path)["model"]
    changed = {k.split(".")[1] for k in initial if k.startswith("backbone.") and not torch.equal(initial[k], trained[k])}
    if objective == "simclr":
        assert "top1_s2" in result.metrics and changed == {"s2"}  # the S1 tower is frozen
    elif objective == "mma":
        assert "top1_s1_to_s2@8" in result.metrics and changed == {"s1", "s2"}
    else:
        assert {"top1", "top1_s1_to_s2@8", "top1_s1_to_s2@16", "loss_dual_simclr", "loss_mma"} <= set(result.metrics)
        assert result.metrics["loss"] == pytest.approx(result.metrics["loss_dual_simclr"] + result.metrics["loss_mma"], rel=1e-5)
        assert changed == {"s1", "s2"} and any(k.startswith("heads.") for k in trained)


def test_dual_simclr_mma_loss_is_the_weighted_sum_of_its_terms():
    from training.contrastive import ContrastivePretrainModel, ObjectiveConfig, ProjectionConfig, contrastive_step
    from training.losses import mma_loss, nt_xent_dual

    config = pretrain.load_pretrain_config(TINY, ["data.crop_size=32"])
    torch.manual_seed(0)
    backbone = pretrain.build_model(config).backbone.eval()  # eval: the same forward in every call
    objective = ObjectiveConfig(kind="dual_simclr_mma", temperature=0.3, mma_strides=(8, 16), mma_weight=0.25,
                                projection=ProjectionConfig(kind="mlp", out_dim=8))
    model = ContrastivePretrainModel(backbone, objective).eval()
    g = torch.Generator().manual_seed(1)
    batch = {"s1": torch.randn(6, 2, 32, 32, generator=g) * 3 - 12, "s2": torch.rand(6, 13, 32, 32, generator=g) * 3000 + 100}
    out = contrastive_step(objective)(model, batch)
    with torch.no_grad():
        z = {m: model.heads[m](backbone.encode(m, batch[m]).pooled) for m in ("s1", "s2")}
        dense = {m: backbone.encode(m, batch[m], dense=True).pyramid for m in ("s1", "s2")}
        image_level = nt_xent_dual(z["s1"], z["s2"], 0.3)
        dense_term = (mma_loss(dense["s1"][1], dense["s2"][1], 0.3) + mma_loss(dense["s1"][2], dense["s2"][2], 0.3)) / 2
    assert float(out.loss.detach()) == pytest.approx(float(image_level + 0.25 * dense_term), rel=1e-5)
    assert float(out.metrics["loss_mma"]) == pytest.approx(float(dense_term), rel=1e-5)
    assert float(out.metrics["loss_dual_simclr"]) == pytest.approx(float(image_level), rel=1e-5)


def test_bf16_autocast_on_cpu_trains(tmp_path):
    config = pretrain.load_pretrain_config(TINY, [
        "data.crop_size=32", "train.batch_size=8", "train.max_steps=1", "train.precision=bf16", "train.device=cpu",
        "train.progress_bar=false", "data.datasets=[{kind: synthetic, n_samples: 8, size: 32}]"])
    result = pretrain.run_pretraining(config, output_dir=tmp_path)
    assert result.finished and np.isfinite(result.metrics["loss"])
    weights = load_training_checkpoint(tmp_path)["model"]
    assert all(v.dtype in (torch.float32, torch.int64) for v in weights.values())  # master weights stay fp32


@pytest.mark.parametrize("policy,counter", [("skip", "total_nan_replaced"), ("mask", "total_masked_pixels")])
def test_nan_samples_are_counted_and_logged(tmp_path, policy, counter):
    config = pretrain.load_pretrain_config(TINY, [
        "data.crop_size=32", "train.batch_size=8", "train.max_steps=2", "train.precision=fp32", "train.device=cpu",
        "train.progress_bar=false", "train.log_every=1", f"data.nan_policy={policy}",
        "data.datasets=[{kind: synthetic, n_samples: 16, size: 32, nan_fraction: 0.5}]"])
    result = pretrain.run_pretraining(config, output_dir=tmp_path)
    assert np.isfinite(result.metrics["loss"])
    records = [r for r in read_jsonl(tmp_path / "log.jsonl") if r["event"] == "train"]
    assert records[-1][counter] > 0 and records[-1][counter] == result.totals[counter.removeprefix("total_")]
