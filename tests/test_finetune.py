"""Fine-tuning: sample selection (held-out split, nested label fractions before oversampling),
frozen and separate-LR training, exact resume, the DFC2020 train/test protocol on real GeoTIFF
trees, export to a load_model folder that predicts on real pairs of any size, 2-process DDP runs."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import rasterio
import torch
from conftest import REPO, terramesh_pair, tiny_model
from dist_helpers import spawn
from finetune_helpers import TINY_RESNET, TINY_SWIN, config_from, finetune_worker, recipe
from safetensors.torch import load_file
from training_data_helpers import make_dfc2020_tree

from s1s2_encoders import ConfigError, S1S2Segmenter, load_backbone, load_model
from training.finetune import build_task_model, parameter_groups, run_finetune
from training.finetune import main as finetune_main
from training.optim import build_optimizer
from training.task_data import balanced_oversampling, fill_one_batch, held_out_split, label_fraction_subset


pytestmark = pytest.mark.usefixtures("one_torch_thread")


# ---------------------------------------------------------------------------------------- selection
def test_held_out_split_is_a_seeded_partition():
    train, held = held_out_split(50, 0.2, seed=3)
    assert len(held) == 10 and len(train) == 40 and sorted(train + held) == list(range(50))
    assert held_out_split(50, 0.2, seed=3) == (train, held)
    assert held_out_split(50, 0.2, seed=4)[1] != held
    with pytest.raises(ConfigError, match=r"split.held_out_fraction must be in \(0, 1\), got 1.0"):
        held_out_split(50, 1.0, 0)


def test_label_fractions_are_nested_fixed_and_drawn_before_oversampling():
    pool = list(range(100, 300))  # e.g. the indices left after a held-out split
    subsets = {f: label_fraction_subset(pool, f, seed=42) for f in (0.01, 0.1, 0.5, 1.0)}
    assert [len(subsets[f]) for f in (0.01, 0.1, 0.5, 1.0)] == [2, 20, 100, 200]
    assert set(subsets[0.01]) < set(subsets[0.1]) < set(subsets[0.5]) < set(subsets[1.0]) == set(pool)
    assert label_fraction_subset(pool, 0.1, seed=42) == subsets[0.1]  # same subset for every run
    assert label_fraction_subset(pool, 0.1, seed=7) != subsets[0.1]
    # oversampling afterwards only repeats the drawn samples
    classes = [i % 3 if i % 7 else 0 for i in subsets[0.1]]
    over = balanced_oversampling(subsets[0.1], classes, seed=0)
    assert set(over) == set(subsets[0.1])
    per_class = {c: sum(1 for i in over if classes[subsets[0.1].index(i)] == c) for c in set(classes)}
    assert len(set(per_class.values())) == 1 and per_class[0] == max(classes.count(c) for c in set(classes))


def test_oversampling_drops_unlabelled_samples_and_small_subsets_fill_a_batch():
    over = balanced_oversampling([10, 11, 12, 13], [0, 0, 255, 1], seed=0)
    assert over == [10, 11, 13, 13]
    assert fill_one_batch([5, 6, 7], 8) == [5, 6, 7] * 3
    assert fill_one_batch(list(range(9)), 8) == list(range(9))


# ---------------------------------------------------------------------------------------- config checks
def test_recipe_validation_messages(tmp_path):
    with pytest.raises(ConfigError, match=r"model.init 'pretrained' needs model.backbone"):
        config_from(recipe(tmp_path, model={"init": "pretrained"}))
    with pytest.raises(ConfigError, match=r"model.fusion 'early' has no pretrained counterpart"):
        config_from(recipe(tmp_path, model={"init": "pretrained", "backbone": "x", "fusion": "early"}))
    with pytest.raises(ConfigError, match=r"split.protocol 'train_test' needs an eval_data section"):
        config_from(recipe(tmp_path, split={"protocol": "train_test"}))
    eval_data = {"datasets": [{"kind": "synthetic", "n_samples": 4, "crop": "random", "crop_size": 16}]}
    with pytest.raises(ConfigError, match=r"eval_data.datasets\[0\] uses random crops; evaluation must be deterministic"):
        config_from(recipe(tmp_path, split={"protocol": "train_test"}, eval_data=eval_data))
    with pytest.raises(ConfigError, match=r"unknown key\(s\) \['lr'\]"):
        config_from(recipe(tmp_path, model={"lr": 1}))


def test_backbone_and_head_get_their_own_learning_rates(tmp_path):
    config = config_from(recipe(tmp_path, model={"backbone_lr": 1e-5}, optimizer={"name": "adamw", "lr": 1e-3}))
    model = build_task_model(config)
    optimizer = build_optimizer(parameter_groups(model, config), config.optimizer)
    tower_params = {id(p) for p in model.towers.parameters()}
    for group in optimizer.param_groups:
        in_towers = {id(p) in tower_params for p in group["params"]}
        assert len(in_towers) == 1
        assert group["lr"] == pytest.approx(1e-5 if in_towers.pop() else 1e-3)
    assert sum(len(g["params"]) for g in optimizer.param_groups) == len(list(model.parameters()))


# ---------------------------------------------------------------------------------------- runs
@pytest.fixture(scope="module")
def swin_backbone_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("bb") / "swin"
    tiny_model("swin-t", normalization="fixed", seed=1).save_pretrained(folder)
    return folder


def test_linear_probe_keeps_the_pretrained_towers_bit_exact(tmp_path, swin_backbone_folder):
    config = config_from(recipe(tmp_path / "run", model={
        "init": "pretrained", "backbone": str(swin_backbone_folder), "freeze_backbone": True, "multi_label": True,
    }))
    result = run_finetune(config)
    assert result.fit.finished and result.fit.step == 4
    record = json.loads((tmp_path / "run" / "results.json").read_text())
    assert record["task"] == "multi_label" and record["protocol"] == "held_out"
    assert record["model"] == {"architecture": "swin-t", "init": "pretrained", "backbone": str(swin_backbone_folder),
                               "frozen_backbone": True, "fusion": "late"}
    assert record["n_train_pool"] == 30 and record["n_eval_samples"] == 10 and record["n_labelled"] == 30
    assert set(record["metrics"]) >= {"average_f1", "micro_f1", "per_class_f1", "n_samples"}
    assert record["metrics"]["n_samples"] + record["metrics"]["n_ignored_samples"] == 10
    exported = load_model(tmp_path / "run" / "model")
    backbone = load_backbone(swin_backbone_folder)
    for branch in ("s1", "s2"):
        for key, value in backbone.tower(branch).state_dict().items():
            assert torch.equal(exported.towers[branch].state_dict()[key], value), key
    fresh = build_task_model(config)  # same seed -> same initial head
    assert not torch.equal(fresh.head.fc.weight, exported.head.fc.weight)
    assert exported.config.provenance["finetune"]["frozen_backbone"] is True
    assert exported.config.provenance["backbone"]["name"] == "tiny-swin-t"


def test_resume_continues_exactly(tmp_path):
    straight = config_from(recipe(tmp_path / "straight"))
    run_finetune(straight)
    resumed = config_from(recipe(tmp_path / "resumed"))
    first = run_finetune(resumed, stop_after_steps=2)
    assert not first.fit.finished and first.results is None and not (tmp_path / "resumed" / "results.json").exists()
    second = run_finetune(resumed, resume="auto")
    assert second.fit.finished and second.fit.step == 4
    a = load_file(str(tmp_path / "straight" / "model" / "model.safetensors"))
    b = load_file(str(tmp_path / "resumed" / "model" / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    ra = json.loads((tmp_path / "straight" / "results.json").read_text())["metrics"]
    rb = json.loads((tmp_path / "resumed" / "results.json").read_text())["metrics"]
    assert ra == rb


@pytest.fixture(scope="module")
def dfc_segmenter_run(tmp_path_factory):
    """The papers' protocol on DFC2020-layout GeoTIFF trees: train on 'validation', test on 'test'."""
    root = tmp_path_factory.mktemp("dfc")
    make_dfc2020_tree(root, "validation", [1, 2, 3, 4], size=64)
    make_dfc2020_tree(root, "test", [10, 11], size=64)
    run = root / "run"
    config = config_from(recipe(
        run,
        model={"task": "segmentation", "architecture": "resnet18", "tower_kwargs": dict(TINY_RESNET), "decoder": {"channels": [16, 8, 8]}},
        data={"crop_size": 48, "datasets": [{"kind": "dfc2020", "root": str(root), "split": "validation", "labels": ["dfc"]}]},
        eval_data={"datasets": [{"kind": "dfc2020", "root": str(root), "split": "test", "labels": ["dfc"]}]},
        labels={"source": "dfc"},
        split={"protocol": "train_test", "label_fraction": 0.5, "balanced_oversampling": True},
        train={"batch_size": 2},
    ))
    result = run_finetune(config)
    return root, run, result


def test_dfc2020_protocol_counts_every_test_pixel_and_ignores_savanna_snow_nodata(dfc_segmenter_run):
    root, run, result = dfc_segmenter_run
    record = json.loads((run / "results.json").read_text())
    assert record["protocol"] == "train_test" and record["eval_crop"] == "none"
    assert record["train_data"][0]["split"] == "validation" and record["eval_data"][0]["split"] == "test"
    assert record["n_train_pool"] == 4 and record["n_labelled"] == 2 and record["n_eval_samples"] == 2
    ignored = 0
    for patch in (10, 11):
        with rasterio.open(root / "ROIs0000_test" / "dfc_0" / f"ROIs0000_test_dfc_0_p{patch}.tif") as src:
            dfc = src.read(1)
        ignored += int(np.isin(dfc, [0, 3, 8]).sum())
    metrics = record["metrics"]
    assert metrics["n_pixels"] + metrics["n_ignored_pixels"] == 2 * 64 * 64  # full patches, not crops
    assert metrics["n_ignored_pixels"] == ignored
    assert np.array(metrics["confusion_matrix"]).sum() == metrics["n_pixels"]
    assert 0.0 <= metrics["miou"] <= metrics["pixel_accuracy"] <= 1.0


def test_fine_tuned_segmenter_folder_loads_and_maps_a_real_pair_of_any_size(dfc_segmenter_run):
    """The issue's acceptance check."""
    _, run, _ = dfc_segmenter_run
    model = load_model(run / "model")
    assert isinstance(model, S1S2Segmenter) and model.task == "segmentation" and not model.training
    assert len(model.class_names) == 8 and model.class_names[0] == "Forest"
    s1, s2 = terramesh_pair()
    probs = model.predict(s1[:, :200, :150], s2[:, :200, :150], s2_offset=1000)
    assert probs.shape == (1, 8, 200, 150) and np.isfinite(probs).all()
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-5)


def test_cli_export_and_error_exit(dfc_segmenter_run, tmp_path, capsys):
    """`python -m training.export RUN` exports fine-tuning runs as it does pretraining runs."""
    _, run, _ = dfc_segmenter_run
    out = tmp_path / "exported"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-m", "training.export", str(run), "-o", str(out)],
                          cwd=REPO, capture_output=True, text=True, timeout=120, env=env)
    assert done.returncode == 0, done.stderr
    assert f"load_model('{out}') verified" in done.stdout and "resnet18 segmentation" in done.stdout
    a = load_file(str(out / "model.safetensors"))
    b = load_file(str(run / "model" / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    provenance = load_model(out).config.provenance
    assert provenance["steps"] == provenance["total_steps"] == 4 and provenance["training_checkpoint"] == "step_00000004.pt"
    results = json.loads((run / "results.json").read_text())
    assert provenance["evaluation"]["metrics"]["miou"] == pytest.approx(results["metrics"]["miou"])
    card = (out / "README.md").read_text()
    assert "## Fine-tuning" in card and "## Evaluation" in card and f"mIoU {results['metrics']['miou']:.4f}" in card
    assert finetune_main(["--config", str(tmp_path / "missing.yaml")]) == 2
    assert "missing.yaml does not exist" in capsys.readouterr().err
    assert finetune_main(["--export", str(run)]) == 2
    assert "error: --export needs -o FOLDER" in capsys.readouterr().err


def test_early_fusion_scratch_swin_classifier_runs(tmp_path):
    config = config_from(recipe(tmp_path / "early", model={"architecture": "swin-t", "tower_kwargs": dict(TINY_SWIN), "fusion": "early"},
                                split={"label_fraction": 0.1}))
    result = run_finetune(config)
    record = result.results
    assert record["n_labelled"] == 3 and record["n_train_samples"] == 9  # 3 samples repeated to fill a batch of 8
    assert record["metrics"]["task"] == "single_label"
    model = load_model(tmp_path / "early" / "model")
    assert list(model.towers) == ["s1s2"]


def test_shipped_recipes_load_strictly():
    from training.finetune import load_finetune_config

    folder = REPO / "training" / "configs" / "finetune"
    assert sorted(p.stem for p in folder.glob("*.yaml")) == ["dfc2020_cls_resnet18", "dfc2020_seg_swin_t", "synthetic_tiny"]
    for path in folder.glob("*.yaml"):
        config = load_finetune_config(path)
        assert config.recipe.name == "finetune-" + path.stem.replace("_", "-")
        assert config.eval.crop == "none"
        if path.stem.startswith("dfc2020"):
            assert config.split.protocol == "train_test" and config.split.fraction_seed == 42
            assert config.data.datasets[0]["split"] == "validation" and config.eval_data.datasets[0]["split"] == "test"
            assert config.class_names == ["Forest", "Shrubland", "Grassland", "Wetlands", "Croplands", "Urban/Built-up", "Barren", "Water"]
            assert config.recipe.faithful_to and config.recipe.differences


def test_two_process_fine_tuning_equals_one_process(tmp_path):
    """torchrun-style DDP (2 gloo processes, global batch split 4 + 4) trains the same weights and
    gives the same sharded evaluation as one process with the whole batch (LayerNorm towers: no per-rank
    BatchNorm statistics; no drop-path)."""
    def data(run):
        # drop_path 0: stochastic depth draws from each rank's own RNG, so it could not match
        return recipe(tmp_path / run, model={"architecture": "swin-t", "tower_kwargs": {**TINY_SWIN, "drop_path_rate": 0.0}},
                      split={"held_out_fraction": 0.225}, train={"max_steps": 2, "checkpoint_every": 2})

    finetune_worker(0, 1, data("one"))
    spawn(finetune_worker, 2, data("two"))
    a = load_file(str(tmp_path / "one" / "model" / "model.safetensors"))
    b = load_file(str(tmp_path / "two" / "model" / "model.safetensors"))
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(b[key], a[key], rtol=1e-4, atol=1e-5, msg=key)
    start = build_task_model(config_from(data("init"))).state_dict()
    assert sum(not torch.equal(a[k], start[k]) for k in a) > len(a) // 2  # trained, not two initialisations
    one = json.loads((tmp_path / "one" / "results.json").read_text())["metrics"]
    two = json.loads((tmp_path / "two" / "results.json").read_text())["metrics"]
    # 9 held-out samples, evaluated 5 + 4 on the two ranks and summed: the same counts as one process
    assert two["confusion_matrix"] == one["confusion_matrix"] and two["n_samples"] == one["n_samples"] == 9
