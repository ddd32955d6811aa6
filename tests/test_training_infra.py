"""Generic training infrastructure: strict configs, parameter groups, LR schedules, the resumable
sampler, atomic checkpoints with RNG states, and the Trainer's exact resume (in-process)."""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import pytest
import torch
from torch import nn

from s1s2_encoders.errors import CheckpointError, ConfigError, ModelNotFoundError
from training.checkpoints import (
    atomic_torch_save,
    capture_rng_state,
    latest_checkpoint,
    list_checkpoints,
    load_training_checkpoint,
    restore_rng_state,
    save_training_checkpoint,
)
from training.config import apply_overrides, from_dict, load_config, to_dict
from training.distributed import DistInfo
from training.optim import LRSchedule, OptimizerConfig, ScheduleConfig, build_optimizer, param_groups
from training.run_log import read_jsonl
from training.sampling import ResumableBatchSampler, SampleKey, sample_seed, unpack_key
from training.trainer import LoopConfig, StepOutput, Trainer


# ----------------------------------------------------------------------------- config
@dataclass
class Inner:
    lr: float = 1e-3
    kind: Literal["a", "b"] = "a"
    sizes: tuple[int, ...] = (1, 2)


@dataclass
class Outer:
    name: str
    inner: Inner = field(default_factory=Inner)
    steps: int | None = None
    tags: dict[str, float] = field(default_factory=dict)


def test_from_dict_builds_nested_dataclasses_and_converts_types():
    cfg = from_dict(Outer, {"name": "x", "inner": {"lr": "5e-4", "sizes": [3, 4, 5]}, "steps": 7, "tags": {"a": 1}})
    assert cfg.inner.lr == 5e-4 and isinstance(cfg.inner.lr, float)  # PyYAML reads 5e-4 as a string
    assert cfg.inner.sizes == (3, 4, 5) and cfg.steps == 7 and cfg.tags == {"a": 1.0}
    assert to_dict(cfg) == {"name": "x", "inner": {"lr": 5e-4, "kind": "a", "sizes": [3, 4, 5]}, "steps": 7, "tags": {"a": 1.0}}


@pytest.mark.parametrize(
    "data,message",
    [
        ({"name": "x", "inner": {"lr": 1, "learning_rate": 2}}, r"cfg\.inner: unknown key\(s\) \['learning_rate'\]; allowed keys: \['kind', 'lr', 'sizes'\]"),
        ({"name": "x", "typo": 1}, r"cfg: unknown key\(s\) \['typo'\]"),
        ({}, r"cfg: required key 'name' is missing"),
        ({"name": "x", "inner": {"lr": "fast"}}, r"cfg\.inner\.lr must be a number, got 'fast'"),
        ({"name": "x", "inner": {"kind": "c"}}, r"cfg\.inner\.kind must be one of \['a', 'b'\], got 'c'"),
        ({"name": "x", "steps": 1.5}, r"cfg\.steps must be an integer, got 1\.5"),
        ({"name": "x", "steps": True}, r"cfg\.steps must be an integer, got True"),
        ({"name": "x", "inner": [1]}, r"cfg\.inner must be a mapping"),
        ({"name": "x", "inner": {"sizes": [1, "b"]}}, r"cfg\.inner\.sizes\[1\] must be an integer, got 'b'"),
    ],
)
def test_from_dict_rejects_bad_input_naming_the_key(data, message):
    with pytest.raises(ConfigError, match=message):
        from_dict(Outer, data, where="cfg")


def test_load_config_applies_dotted_overrides(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text("name: base\ninner:\n  lr: 1.0e-3\n", encoding="utf-8")
    cfg = load_config(Outer, path, ["inner.lr=5e-4", "steps=3", "inner.kind=b"])
    assert (cfg.inner.lr, cfg.steps, cfg.inner.kind) == (5e-4, 3, "b")
    with pytest.raises(ConfigError, match="must look like section.key=value"):
        apply_overrides({}, ["inner.lr"])
    with pytest.raises(ConfigError, match=r"r\.yaml: unknown key\(s\) \['nme'\]"):
        load_config(Outer, path, ["nme=1"])
    with pytest.raises(FileNotFoundError, match="missing.yaml does not exist"):
        load_config(Outer, tmp_path / "missing.yaml")
    (tmp_path / "bad.yaml").write_text("a: [1, 2\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="bad.yaml is not valid YAML"):
        load_config(Outer, tmp_path / "bad.yaml")


# ----------------------------------------------------------------------------- optim
class TinySwinLike(nn.Module):
    def __init__(self):
        super().__init__()
        self.backbone = nn.Sequential(nn.Linear(4, 4), nn.LayerNorm(4))
        self.backbone.relative_position_bias_table = nn.Parameter(torch.zeros(9, 2))
        self.head = nn.Linear(4, 2)
        self.frozen = nn.Linear(2, 2)
        self.frozen.requires_grad_(False)


def test_param_groups_exclude_norms_biases_and_position_tables_from_decay():
    groups = {g["name"]: g for g in param_groups(TinySwinLike(), 0.05)}
    assert set(groups) == {"all/decay", "all/no_decay"}
    assert sorted(groups["all/decay"]["param_names"]) == ["backbone.0.weight", "head.weight"]
    assert sorted(groups["all/no_decay"]["param_names"]) == [
        "backbone.0.bias", "backbone.1.bias", "backbone.1.weight", "backbone.relative_position_bias_table", "head.bias",
    ]
    assert groups["all/decay"]["weight_decay"] == 0.05 and groups["all/no_decay"]["weight_decay"] == 0.0
    everything = param_groups(TinySwinLike(), 1e-4, decay_norm_and_bias=True)
    assert len(everything) == 1 and len(everything[0]["param_names"]) == 7  # frozen ones never included


def test_param_groups_lr_scales_by_longest_prefix_and_build_optimizer():
    groups = param_groups(TinySwinLike(), 0.1, lr_scales={"backbone.": 0.1, "backbone.1.": 0.5})
    by_name = {n: g["lr_scale"] for g in groups for n in g["param_names"]}
    assert by_name["backbone.0.weight"] == 0.1 and by_name["backbone.1.weight"] == 0.5 and by_name["head.weight"] == 1.0
    opt = build_optimizer(groups, OptimizerConfig(name="adamw", lr=2e-3))
    lrs = {g["name"]: g["lr"] for g in opt.param_groups}
    assert lrs["backbone/decay"] == pytest.approx(2e-4) and lrs["all/decay"] == pytest.approx(2e-3)
    assert isinstance(build_optimizer(groups, OptimizerConfig(name="adam")), torch.optim.Adam)
    assert isinstance(build_optimizer(groups, OptimizerConfig(name="sgd")), torch.optim.SGD)


def _opt():
    return build_optimizer(param_groups(nn.Linear(2, 2), 0.0), OptimizerConfig(lr=1.0))


def test_warmup_cosine_schedule_per_iteration():
    sched = LRSchedule(_opt(), ScheduleConfig(kind="warmup_cosine", warmup_steps=4, min_factor=0.1), total_steps=14, steps_per_epoch=5)
    factors = [sched.factor(s) for s in range(14)]
    assert factors[:4] == pytest.approx([0.25, 0.5, 0.75, 1.0])
    assert factors[4] == pytest.approx(1.0)
    assert factors[9] == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 0.5)))
    assert factors[13] == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 0.9)))
    assert all(a >= b for a, b in zip(factors[4:], factors[5:]))
    sched.apply(2)
    assert sched.optimizer.param_groups[0]["lr"] == pytest.approx(0.75)
    by_epochs = LRSchedule(_opt(), ScheduleConfig(warmup_epochs=1.0), total_steps=20, steps_per_epoch=5)
    assert by_epochs.warmup_steps == 5


def test_published_schedules_as_they_actually_ran():
    swin = LRSchedule(_opt(), ScheduleConfig(kind="constant", factor=1e-3), total_steps=100, steps_per_epoch=10)
    assert {swin.factor(s) for s in (0, 50, 99)} == {1e-3}
    resnet = LRSchedule(_opt(), ScheduleConfig(kind="epoch_cosine", delay_epochs=10, t_max_epochs=903), 1000, 5)
    assert resnet.factor(0) == resnet.factor(54) == 1.0  # epochs 0..10 are flat
    assert resnet.factor(55) == pytest.approx(0.5 * (1 + math.cos(math.pi / 903)))  # epoch 11: one scheduler step
    assert resnet.factor(55) == resnet.factor(59)  # constant within an epoch
    assert 0.5 * (1 + math.cos(math.pi * 190 / 903)) == pytest.approx(0.894, abs=1e-3)  # §2.4: ~0.89 at epoch 200


def test_schedule_config_validation():
    with pytest.raises(ConfigError, match="warmup_steps or warmup_epochs, not both"):
        ScheduleConfig(warmup_steps=1, warmup_epochs=1.0)
    with pytest.raises(ConfigError, match="needs t_max_epochs"):
        ScheduleConfig(kind="epoch_cosine")


# ----------------------------------------------------------------------------- sampler
def test_sampler_ranks_partition_each_global_batch_contiguously():
    single = list(ResumableBatchSampler(23, 6, seed=5))
    ranks = [list(ResumableBatchSampler(23, 6, rank=r, world_size=3, seed=5)) for r in range(3)]
    assert len(single) == 3 and all(len(r) == 3 for r in ranks)  # 23 // 6, tail dropped
    for b in range(3):
        assert sum((ranks[r][b] for r in range(3)), []) == single[b]
    flat = [k.index for batch in single for k in batch]
    assert len(set(flat)) == 18 and all(0 <= i < 23 for i in flat)
    assert all(isinstance(k, SampleKey) for k in single[0])


def test_sampler_epochs_differ_and_positions_resume_exactly():
    s = ResumableBatchSampler(40, 8, seed=1)
    s.set_position(0)
    epoch0 = list(s)
    s.set_position(1)
    epoch1 = list(s)
    assert epoch0 != epoch1
    s.set_position(1, start_batch=3)
    assert list(s) == epoch1[3:] and len(s) == 2
    # per-sample seeds depend on (seed, epoch, position) only
    assert epoch1[0][0].seed == sample_seed(1, 1, 0)
    assert unpack_key(7)[0] == 7 and unpack_key(SampleKey(3, 9)) == (3, 9)


def test_sampler_rejects_impossible_batches():
    with pytest.raises(ConfigError, match="global batch size 10 is not divisible by the 3 processes"):
        ResumableBatchSampler(100, 10, world_size=3)
    with pytest.raises(ConfigError, match="the dataset has 5 samples, fewer than one global batch of 8"):
        ResumableBatchSampler(5, 8)


# ----------------------------------------------------------------------------- checkpoints
def test_rng_state_round_trip_through_a_weights_only_checkpoint(tmp_path):
    random.seed(1)
    np.random.seed(2)
    torch.manual_seed(3)
    state = capture_rng_state()
    expected = (random.random(), float(np.random.rand()), float(torch.rand(1)))
    save_training_checkpoint(tmp_path, 5, {"rng": [state]})
    random.seed(99)
    np.random.seed(99)
    torch.manual_seed(99)
    loaded = load_training_checkpoint(tmp_path)  # run folder -> latest
    restore_rng_state(loaded["rng"][0])
    assert (random.random(), float(np.random.rand()), float(torch.rand(1))) == expected
    assert loaded["step"] == 5


def test_checkpoints_are_atomic_listed_pruned_and_validated(tmp_path):
    for step in (1, 2, 3, 4):
        save_training_checkpoint(tmp_path, step, {"x": torch.tensor([step])}, keep_last=2)
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step_00000003.pt", "step_00000004.pt"]
    assert latest_checkpoint(tmp_path).name == "step_00000004.pt"
    assert not [p for p in (tmp_path / "checkpoints").iterdir() if ".tmp-" in p.name]
    with pytest.raises(ModelNotFoundError, match="has no training checkpoints"):
        load_training_checkpoint(tmp_path / "empty_run" if (tmp_path / "empty_run").mkdir() is None else None)
    with pytest.raises(ModelNotFoundError, match="does not exist"):
        load_training_checkpoint(tmp_path / "nope.pt")
    atomic_torch_save({"format": "something else"}, tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match="not an s1s2-encoders training checkpoint"):
        load_training_checkpoint(tmp_path / "other.pt")
    good = list_checkpoints(tmp_path)[-1]
    (tmp_path / "trunc.pt").write_bytes(good.read_bytes()[:100])
    with pytest.raises(CheckpointError, match="trunc.pt is not a readable training checkpoint"):
        load_training_checkpoint(tmp_path / "trunc.pt")


def test_atomic_save_leaves_no_partial_file_on_failure(tmp_path):
    class Unpicklable:
        def __reduce__(self):
            raise RuntimeError("boom")

    target = tmp_path / "x.pt"
    with pytest.raises(RuntimeError, match="boom"):
        atomic_torch_save({"bad": Unpicklable()}, target)
    assert list(tmp_path.iterdir()) == []


# ----------------------------------------------------------------------------- trainer
class NoisyRegression(torch.utils.data.Dataset):
    """y = x . w + noise, where the noise comes from the SampleKey seed (per-sample randomness)."""

    def __init__(self, n=40):
        g = torch.Generator().manual_seed(0)
        self.x = torch.randn(n, 4, generator=g)
        self.w = torch.tensor([1.0, -2.0, 0.5, 3.0])

    def __len__(self):
        return len(self.x)

    def __getitem__(self, key):
        index, seed = unpack_key(key)
        noise = float(np.random.default_rng(seed).normal(0, 0.1))
        return {"x": self.x[index], "y": self.x[index] @ self.w + noise}


class DropoutRegressor(nn.Module):
    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(4, 8), nn.Dropout(0.2), nn.Linear(8, 1))  # dropout: RNG must resume too

    def forward(self, batch):
        return self.net(batch["x"]).squeeze(1)


def _mse_step(model, batch):
    pred = model(batch)
    loss = ((pred - batch["y"]) ** 2).mean()
    return StepOutput(loss, metrics={"abs_err": (pred - batch["y"]).abs().mean()}, counts={"samples": len(pred)})


def _trainer(run_dir, max_steps=12, **loop):
    torch.manual_seed(0)
    return Trainer(
        model=DropoutRegressor(), step_fn=_mse_step, dataset=NoisyRegression(),
        loop=LoopConfig(batch_size=8, max_steps=max_steps, log_every=2, checkpoint_every=4, num_workers=0, progress_bar=False, **loop),
        optimizer=OptimizerConfig(name="adamw", lr=1e-2, weight_decay=0.01, grad_clip_norm=1.0),
        schedule=ScheduleConfig(kind="warmup_cosine", warmup_steps=3),
        dist=DistInfo(), run_dir=run_dir, run_config={"name": "test"},
    )


def test_trainer_stop_and_resume_equals_uninterrupted(tmp_path):
    # 40 samples / batch 8 = 5 steps per epoch: 12 steps cross two epoch boundaries.
    full = _trainer(tmp_path / "full")
    result = full.fit()
    assert result.finished and result.step == 12 and result.totals["samples"] == 96
    first = _trainer(tmp_path / "split")
    stopped = first.fit(stop_after_steps=7)  # mid-epoch, between checkpoints: stop writes one
    assert not stopped.finished and stopped.step == 7
    assert stopped.last_checkpoint.name == "step_00000007.pt"
    second = _trainer(tmp_path / "split")
    resumed = second.fit(resume="auto")
    assert resumed.finished and resumed.totals["samples"] == 96
    for (name, a), (_, b) in zip(full.module.state_dict().items(), second.module.state_dict().items()):
        assert torch.equal(a, b), name
    full_log = [r for r in read_jsonl(tmp_path / "full" / "log.jsonl") if r["event"] == "train"]
    split_log = [r for r in read_jsonl(tmp_path / "split" / "log.jsonl") if r["event"] == "train"]
    assert [r["step"] for r in full_log] == [2, 4, 6, 8, 10, 12]
    # The loss at every step after the restart is identical.
    assert [r["loss"] for r in full_log if r["step"] >= 10] == [r["loss"] for r in split_log if r["step"] >= 10]
    assert full_log[0]["lr_factor"] == pytest.approx(2 / 3)  # logged after iteration index 1 of a 3-step warmup
    assert any(r["event"] == "resume" for r in read_jsonl(tmp_path / "split" / "log.jsonl"))


def test_trainer_refuses_to_overwrite_and_checks_resume_compatibility(tmp_path):
    _trainer(tmp_path / "run", max_steps=4).fit()
    with pytest.raises(ConfigError, match="already has checkpoints .*step_00000004.pt.*--resume"):
        _trainer(tmp_path / "run", max_steps=4).fit()
    other = _trainer(tmp_path / "run", max_steps=4)
    other.loop.batch_size = 4
    other.sampler.global_batch_size = 4
    with pytest.raises(ConfigError, match="global batch 8, this run has .* and 4"):
        other.fit(resume="auto")
    done = _trainer(tmp_path / "run", max_steps=4).fit(resume="auto")  # already finished: nothing to do
    assert done.finished and done.step == 4


def test_trainer_stops_on_non_finite_loss(tmp_path):
    def nan_step(model, batch):
        out = _mse_step(model, batch)
        return StepOutput(out.loss * float("nan"))

    trainer = _trainer(tmp_path / "nan")
    trainer.step_fn = nan_step
    with pytest.raises(FloatingPointError, match="the loss is nan at step 2"):
        trainer.fit()
