"""The label-efficiency benchmark (benchmarks/finetune_label_efficiency.py): its recipes carry the
pretraining objective, the scene variability and one learning rate for every arm; (slow) it runs
end to end on a few scenes and reports the five rows of each task."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from training.config import from_dict
from training.finetune import FinetuneConfig
from training.pretrain import PretrainConfig

REPO = Path(__file__).resolve().parents[1]


def _benchmark():
    spec = importlib.util.spec_from_file_location("finetune_label_efficiency", REPO / "benchmarks" / "finetune_label_efficiency.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_default_recipes_pretrain_dense_mma_and_fine_tune_every_arm_with_one_learning_rate():
    bench = _benchmark()
    args = bench.build_parser().parse_args([])
    pretraining = from_dict(PretrainConfig, bench.pretraining_recipe(args), where="test")
    assert pretraining.objective.kind == "mma" and tuple(pretraining.objective.mma_strides) == (8, 16)
    assert pretraining.train.max_steps == 300 and pretraining.data.datasets[0]["phenology"] == 0.0
    for task in ("classification", "segmentation"):
        recipe = bench.finetune_recipe(args, task)
        assert recipe["model"]["backbone_lr"] is None and recipe["train"]["max_steps"] == 400
        recipe["model"]["backbone"] = "unused"
        assert from_dict(FinetuneConfig, recipe, where="test").model.task == task


def test_scene_variability_and_objective_reach_pretraining_and_both_data_sections():
    bench = _benchmark()
    args = bench.build_parser().parse_args(["--objective", "dual_simclr_mma", "--mma-strides", "4,8,16", "--phenology", "0.3",
                                            "--moisture", "0.5", "--mixing-px", "0.7", "--backbone-lr", "1e-4"])
    pretraining = from_dict(PretrainConfig, bench.pretraining_recipe(args), where="test")
    assert pretraining.objective.kind == "dual_simclr_mma" and tuple(pretraining.objective.mma_strides) == (4, 8, 16)
    variability = {"phenology": 0.3, "moisture": 0.5, "mixing_px": 0.7}
    assert {k: pretraining.data.datasets[0][k] for k in variability} == variability
    recipe = bench.finetune_recipe(args, "segmentation")
    for section in ("data", "eval_data"):
        assert {k: recipe[section]["datasets"][0][k] for k in variability} == variability
    assert recipe["model"]["backbone_lr"] == 1e-4


@pytest.mark.slow
def test_benchmark_runs_end_to_end_on_a_few_scenes(tmp_path):
    bench = _benchmark()
    args = bench.build_parser().parse_args([
        "--pretrain-steps", "3", "--finetune-steps", "2", "--train-scenes", "20", "--eval-scenes", "4", "--seeds", "0",
        "--threads", "1", "--work-dir", str(tmp_path), "--mixing-px", "0.7"])
    report = bench.run(args)
    assert report["pretraining"]["objective"] == "mma" and report["pretraining"]["steps"] == 3
    for task in ("classification", "segmentation"):
        rows = report["tasks"][task]["rows"]
        assert [(r["variant"], r["label_fraction"], r["n_labelled"]) for r in rows] == [
            ("finetuned", 0.1, 2), ("frozen", 0.1, 2), ("scratch", 0.1, 2), ("scratch", 1.0, 20), ("finetuned", 1.0, 20)]
        assert set(report["claims"][task]) == {"metric", "ssl_10_beats_scratch_10", "ssl_10_minus_scratch_10", "ssl_10_minus_scratch_100"}
    assert "| SSL fine-tuned | 10 % (2) |" in bench.markdown_table(report)
