"""Pretraining throughput of the dual Swin-T (Dual-SimCLR): steps/s and pairs/s with and without bf16
autocast and activation checkpointing, and the largest batch that fits in a given memory.

    python benchmarks/train_throughput.py                          # CPU, batch 8, memory budgets 16 / 80 GiB
    python benchmarks/train_throughput.py --batches 4,8 --memory-gib 24,80
    python benchmarks/train_throughput.py --device cuda --batches 64,128   # measures peak memory directly

One training step is exactly what ``training.trainer.Trainer`` does for the recipe
``training/configs/dual_simclr_swin_t.yaml`` (model from ``training.pretrain.build_model``, the step of
``training.contrastive.contrastive_step``, its AdamW parameter groups): forward of both towers + heads,
NT-Xent, backward, gradient clipping, optimiser step, on real-size random-weight towers with random inputs
in realistic ranges. The four variants (float32 / bf16 autocast x activation checkpointing off / on,
via timm's ``set_grad_checkpointing``) are timed in round-robin; ratios are against float32 without
checkpointing in the same run.

Memory: the largest batch is ``(budget - fixed) / per-sample``, where *fixed* is weights + gradients +
AdamW state (16 bytes per trainable parameter) and *per-sample* is the size of the tensors autograd saves
for the backward pass (counted with ``torch.autograd.graph.saved_tensors_hooks``, storages counted once)
divided by the batch size. It is a lower bound of the real peak (allocator slack and temporary buffers of
the backward pass come on top); on CUDA (``--device cuda``) the peak is also measured with
``torch.cuda.max_memory_allocated``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import REPO, machine_info, median, round_robin, synchronize  # noqa: E402

from training.contrastive import contrastive_step  # noqa: E402
from training.optim import build_optimizer, param_groups  # noqa: E402
from training.pretrain import build_model, load_pretrain_config  # noqa: E402
from s1s2_encoders.models.compute import choose_compute, cpu_flags  # noqa: E402

RECIPE = REPO / "training" / "configs" / "dual_simclr_swin_t.yaml"
VARIANTS = {  # name: (bf16 autocast, activation checkpointing)
    "fp32": (False, False),
    "fp32+ckpt": (False, True),
    "bf16": (True, False),
    "bf16+ckpt": (True, True),
}
BASELINE = "fp32"


def build(device: torch.device, checkpointing: bool, overrides: list[str]):
    config = load_pretrain_config(RECIPE, overrides)
    torch.manual_seed(0)
    model = build_model(config).to(device).train()
    for modality in ("s1", "s2"):
        model.backbone.tower(modality).set_grad_checkpointing(checkpointing)
    groups = param_groups(model, config.optimizer.weight_decay)
    optimizer = build_optimizer(groups, config.optimizer)
    return config, model, optimizer


def make_batch(batch: int, size: int, device: torch.device, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {
        "s1": (torch.rand(batch, 2, size, size, generator=g) * 25 - 25).to(device),
        "s2": (torch.rand(batch, 13, size, size, generator=g) * 10000).to(device),
    }


def make_step(config, model, optimizer, batch, device: torch.device, bf16: bool):
    step_fn = contrastive_step(config.objective)
    clip = config.optimizer.grad_clip_norm

    def step() -> float:
        optimizer.zero_grad(set_to_none=True)
        context = torch.autocast(device.type, dtype=torch.bfloat16) if bf16 else torch.autocast(device.type, enabled=False)
        with context:
            out = step_fn(model, batch)
        out.loss.backward()
        if clip:
            torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
        optimizer.step()
        return float(out.loss.detach())

    return step


def saved_activation_bytes(step_model, batch, bf16: bool, device: torch.device, objective) -> int:
    """Bytes of the distinct storages autograd saves for backward in one forward pass."""
    seen: dict[int, int] = {}

    def pack(t: torch.Tensor):
        storage = t.untyped_storage()
        seen[storage.data_ptr()] = storage.nbytes()
        return t

    step_fn = contrastive_step(objective)
    context = torch.autocast(device.type, dtype=torch.bfloat16) if bf16 else torch.autocast(device.type, enabled=False)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), context:
        out = step_fn(step_model, batch)
    del out
    params = {p.untyped_storage().data_ptr() for p in step_model.parameters()}
    return sum(n for ptr, n in seen.items() if ptr not in params)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batches", default="8", help="batch sizes (pairs per step)")
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--memory-gib", default="16,80", help="memory budgets for the largest-batch estimate")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--tiny", action="store_true", help="tiny towers (smoke test of this script)")
    parser.add_argument("--emulated-bf16", action="store_true",
                        help="also time the bf16 variants where bfloat16 is not native (slow: emulated)")
    parser.add_argument("--json", default="benchmarks/results/train_throughput.json")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    overrides = ["objective.gather=false"]
    if args.tiny:
        overrides.append('model.tower_kwargs={"embed_dim": 16, "depths": [1, 1, 1, 1], "num_heads": [1, 1, 1, 1]}')
    info = machine_info(device)
    native = (choose_compute("auto", device).dtype == torch.bfloat16) if device.type != "mps" else False
    info["native_bf16"] = native
    info["cpu_class"] = ", ".join(f for f in ("amx_bf16", "avx512_bf16") if f in cpu_flags()) or "no native bf16"
    print(f"# CPU class: {info['cpu_class']}; {info['cpu']} ({info['torch_threads']} threads), torch {info['torch']}, "
          f"device {device}; recipe {RECIPE.relative_to(REPO)}, {args.size} px")
    # bf16 autocast where the hardware only emulates bfloat16 takes many times the float32 step: not applicable.
    variants = {n: v for n, v in VARIANTS.items() if native or args.emulated_bf16 or not v[0]}
    skipped = [n for n in VARIANTS if n not in variants]

    built = {name: build(device, ckpt, overrides) for name, (_, ckpt) in variants.items()}
    config = next(iter(built.values()))[0]
    n_params = sum(p.numel() for p in built[BASELINE][1].parameters() if p.requires_grad)
    fixed = 16 * n_params
    budgets = [float(b) for b in args.memory_gib.split(",")]
    rows = []
    header = (f"{'batch':>5}  {'variant':<10} {'steps/s':>8} {'pairs/s':>8} {'x fp32':>7} {'saved act. MiB/pair':>20} "
              + " ".join(f"{'max batch @' + format(b, 'g') + ' GiB':>18}" for b in budgets))
    print(f"trainable parameters: {n_params / 1e6:.1f} M -> weights + grads + AdamW state = {fixed / 2**30:.2f} GiB\n")
    print(header)
    print("-" * len(header))
    for batch_size in (int(b) for b in args.batches.split(",")):
        batch = make_batch(batch_size, args.size, device)
        steps = {name: make_step(cfg, model, opt, batch, device, VARIANTS[name][0]) for name, (cfg, model, opt) in built.items()}
        load_before = os.getloadavg()[0]
        times = round_robin(steps, args.repeats, device)
        load_after = os.getloadavg()[0]
        base = median(times[BASELINE])
        for name, seconds in times.items():
            bf16 = VARIANTS[name][0]
            probe = make_batch(2, args.size, device, seed=1)
            act = saved_activation_bytes(built[name][1], probe, bf16, device, config.objective) / 2
            peak_measured = None
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
                steps[name]()
                synchronize(device)
                peak_measured = torch.cuda.max_memory_allocated(device)
            largest = [max(0, int((b * 2**30 - fixed) // act)) for b in budgets]
            row = {
                "batch": batch_size, "variant": name, "bf16_autocast": bf16, "checkpointing": VARIANTS[name][1],
                "seconds": seconds, "steps_per_s": 1 / median(seconds), "pairs_per_s": batch_size / median(seconds),
                "ratio": base / median(seconds), "saved_activation_bytes_per_pair": act, "fixed_bytes": fixed,
                "largest_batch": dict(zip(map(str, budgets), largest)), "peak_measured_bytes": peak_measured,
                "load_before": load_before, "load_after": load_after,
            }
            rows.append(row)
            print(f"{batch_size:>5}  {name:<10} {row['steps_per_s']:>8.3f} {row['pairs_per_s']:>8.2f} {row['ratio']:>7.2f} "
                  f"{act / 2**20:>20.1f} " + " ".join(f"{n:>18d}" for n in largest), flush=True)
        for name in skipped:
            note = "not applicable: no native bfloat16 here (emulated; --emulated-bf16 times it)"
            rows.append({"batch": batch_size, "variant": name, "bf16_autocast": True, "checkpointing": VARIANTS[name][1],
                         "seconds": [], "steps_per_s": float("nan"), "pairs_per_s": float("nan"), "ratio": float("nan"),
                         "note": note})
            print(f"{batch_size:>5}  {name:<10} {note}", flush=True)
    timed = [r for r in rows if r["seconds"]]
    print(f"\nload average during the timings: {timed[0]['load_before']:.1f}-{timed[-1]['load_after']:.1f}. "
          "max batch: (budget - fixed) / saved activations per pair, a lower bound of the real peak.")
    out = Path(args.json)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps({"machine": info, "recipe": str(RECIPE.relative_to(REPO)), "size": args.size,
                               "trainable_parameters": n_params, "results": rows}, indent=2))
    os.replace(tmp, out)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
