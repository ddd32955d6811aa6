"""The evaluation grid: variants x label fractions x seeds -> mean ± std tables (markdown + JSON),
rows that name their protocol and data, and reuse of finished cells."""

import json

import numpy as np
import pytest
from conftest import tiny_model
from finetune_helpers import recipe

from s1s2_encoders import ConfigError, load_model
from training.evaluate import render_markdown, run_grid, variant_overrides


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_grid_tables_are_means_and_sample_stds_of_the_cells(tmp_path, capsys):
    backbone = tmp_path / "backbone"
    tiny_model("swin-t", normalization="fixed", seed=2).save_pretrained(backbone)
    base = recipe(tmp_path / "unused", train={"max_steps": 2, "checkpoint_every": 2})
    grid = tmp_path / "grid"
    tables = run_grid(base, variants=["scratch", "finetuned"], fractions=[0.5, 1.0], seeds=[0, 1], output_dir=grid,
                      backbone=str(backbone))
    assert tables["task"] == "single_label" and tables["headline"] == "average_accuracy"
    assert [(r["variant"], r["label_fraction"]) for r in tables["rows"]] == [
        ("scratch", 0.5), ("scratch", 1.0), ("finetuned", 0.5), ("finetuned", 1.0)]
    for row in tables["rows"]:
        cells = [json.loads((grid / row["variant"] / f"fraction_{row['label_fraction']:g}" / f"seed_{s}" / "results.json").read_text())
                 for s in (0, 1)]
        values = [c["metrics"]["average_accuracy"] for c in cells]
        assert row["metrics"]["average_accuracy"]["values"] == values
        assert row["metrics"]["average_accuracy"]["mean"] == pytest.approx(np.mean(values))
        assert row["metrics"]["average_accuracy"]["std"] == pytest.approx(np.std(values, ddof=1))
        assert row["setting"]["protocol"] == "held_out" and row["setting"]["train_data"][0]["kind"] == "synthetic"
        assert row["n_labelled"] == (15 if row["label_fraction"] == 0.5 else 30)
    # scratch has the backbone's architecture, from random weights; finetuned starts from it
    scratch = load_model(grid / "scratch" / "fraction_1" / "seed_0" / "model")
    tuned = load_model(grid / "finetuned" / "fraction_1" / "seed_0" / "model")
    assert scratch.config.tower_kwargs == tuned.config.tower_kwargs and scratch.config.architecture == "swin-t"
    assert scratch.config.normalization == tuned.config.normalization
    assert tuned.config.provenance["finetune"]["init"] == "pretrained" and scratch.config.provenance["finetune"]["init"] == "scratch"
    markdown = (grid / "results.md").read_text()
    assert markdown == render_markdown(json.loads((grid / "results.json").read_text()))
    assert "## 50 % of the training labels" in markdown and "## Average accuracy (AA) by label fraction" in markdown
    assert "| model | Forest | Shrubland |" in markdown and "| Average | OA | protocol / data |" in markdown
    aa = tables["rows"][0]["metrics"]["average_accuracy"]
    assert f"**{100 * aa['mean']:.1f} ± {100 * aa['std']:.1f}**" in markdown
    assert "held_out: synthetic (40) -> held-out part of train_data, 15 labelled, 2 seeds" in markdown
    # a second call reuses every finished cell
    capsys.readouterr()
    again = run_grid(base, variants=["scratch", "finetuned"], fractions=[0.5, 1.0], seeds=[0, 1], output_dir=grid,
                     backbone=str(backbone))
    assert capsys.readouterr().out.count("[grid] reuse") == 8
    assert json.dumps(again, sort_keys=True, default=str) == json.dumps(tables, sort_keys=True, default=str)


def test_variant_errors():
    with pytest.raises(ConfigError, match=r"unknown variant 'ssl'; choose from scratch, frozen, finetuned"):
        variant_overrides("ssl", None)
    with pytest.raises(ConfigError, match=r"variant 'frozen' needs a pretrained backbone"):
        variant_overrides("frozen", None)
