"""Where the time of one embedding batch goes, per kind of work, with FLOPs and achieved GFLOP/s.

    python benchmarks/profile_embed.py                        # dual Swin-T, 224 px, batch 16, float32 and bfloat16
    python benchmarks/profile_embed.py --arch resnet50 --batch 16 --dtypes bfloat16

Forward hooks time every module (``time.perf_counter`` around each call: CPU kernels are synchronous);
a module's *self* time is its time minus that of its timed children, and is booked to a category:

    linear (GEMM)          nn.Linear: qkv, proj, MLP fc1/fc2, patch-merging reduction
    attention core         WindowAttention minus its Linears: QK^T, scale, bias + mask, softmax, AV
    LayerNorm              nn.LayerNorm
    GELU                   nn.GELU
    window shift/partition SwinTransformerBlock minus children: roll, pad, window partition/reverse,
                           shifted-window mask, residual adds (inference copies: window gather/scatter
                           and the attention core, which they run inline)
    fc1+GELU fused         inference copies only: oneDNN linear with GELU post-op
    patch merging          PatchMerging minus children: 2x2 gather and reshape
    conv                   nn.Conv2d (patch embedding; all of a ResNet's convolutions)
    batchnorm/relu/...     other leaf modules
    other                  the rest (stage glue, pooling, normalisation of the inputs, casts)

FLOPs come from ``torch.utils.flop_counter.FlopCounterMode`` per module, so GFLOP/s can be given per
category (linear, attention core, conv) and compared with the bfloat16 GEMM peak measured in the same
run. Hooks add a few microseconds per module call; totals are within a few percent of an unhooked run.
Then ``torch.profiler`` lists the ATen operators with the most self time (``--ops N``).
"""

from __future__ import annotations

import argparse
import copy
import sys
import time
from collections import defaultdict
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import gemm_peak_gflops, machine_info, real_pairs, tile_batch  # noqa: E402

from s1s2_encoders import load_backbone  # noqa: E402
from s1s2_encoders.models.compute import cpu_has_native_bf16  # noqa: E402
from s1s2_encoders.models.towers import input_memory_format, tower_output  # noqa: E402

REGISTRY_NAMES = {"swin-t": "swin-s1s2", "resnet50": "resnet50-s1s2", "resnet18": "resnet18-s1s2"}


def category(module: nn.Module) -> str:
    name = type(module).__name__
    return {
        "Linear": "linear (GEMM)",
        "WindowAttention": "attention core",
        "LayerNorm": "LayerNorm",
        "GELU": "GELU",
        "SwinTransformerBlock": "window shift/partition",
        "PatchMerging": "patch merging",
        "Conv2d": "conv",
        "BatchNorm2d": "batchnorm",
        "ReLU": "relu",
        "Bottleneck": "residual add (ResNet)",
        "BasicBlock": "residual add (ResNet)",
        # In the inference copies the Mlp runs fc1 + GELU as one oneDNN call (its own time), and the
        # block runs the attention core inline (in the block's own time).
        "Mlp": "fc1+GELU fused (inference copy)",
    }.get(name, "other")


class ModuleTimer:
    """Self time per category, accumulated over calls, via forward pre/post hooks."""

    def __init__(self, root: nn.Module):
        self.self_time: dict[str, float] = defaultdict(float)
        self._stack: list[list] = []  # [category, start, children_time]
        self._handles = []
        for module in root.modules():
            self._handles.append(module.register_forward_pre_hook(self._pre))
            self._handles.append(module.register_forward_hook(self._post))

    def _pre(self, module, args):
        self._stack.append([category(module), time.perf_counter(), 0.0])

    def _post(self, module, args, output):
        cat, start, children = self._stack.pop()
        elapsed = time.perf_counter() - start
        self.self_time[cat] += elapsed - children
        if self._stack:
            self._stack[-1][2] += elapsed

    def remove(self):
        for handle in self._handles:
            handle.remove()


def flops_by_category(tower: nn.Module, run) -> dict[str, float]:
    """FLOPs of ``run()`` booked to the category of the module that performed them (self FLOPs).

    FlopCounterMode names modules ``<RootClass>.<path>``; both towers have the same structure, so
    their counts merge under the same names, which is what a per-category total wants.
    """
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        run()
    totals = {name: float(sum(ops.values())) for name, ops in counter.get_flop_counts().items() if name != "Global"}
    out: dict[str, float] = defaultdict(float)
    for name, total in totals.items():
        children = [c for c in totals if c.startswith(name + ".") and "." not in c[len(name) + 1:]]
        own = total - sum(totals[c] for c in children)
        if own <= 0:
            continue
        path = name.split(".", 1)[1] if "." in name else ""
        try:
            module = tower.get_submodule(path) if path else tower
        except AttributeError:
            module = None
        out[category(module) if module is not None else "other"] += own
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--arch", default="swin-t", choices=sorted(REGISTRY_NAMES))
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--dtypes", default="float32,bfloat16")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--towers", default="plain,inference", help="plain: timm towers cast to the dtype; "
                        "inference: the optimised copies embed uses (s1s2_encoders.models.fast)")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--ops", type=int, default=12, help="rows of the torch.profiler operator table (0: none)")
    args = parser.parse_args(argv)

    if args.threads:
        torch.set_num_threads(args.threads)
    info = machine_info(torch.device("cpu"))
    print(f"# {info['cpu']}, {info['torch_threads']} threads, torch {info['torch']}; "
          f"{args.arch} x 2 towers, {args.size} px, batch {args.batch}")
    torch.manual_seed(0)
    model = load_backbone(REGISTRY_NAMES[args.arch], pretrained=False).eval()
    s1, s2 = (tile_batch(a, args.batch) for a in real_pairs(args.size))
    x1, x2 = torch.from_numpy(s1), torch.from_numpy(s2) - 1000
    from s1s2_encoders.models.fast import InferenceTower

    cpu = torch.device("cpu")
    for dtype_name, kind in ((d, k) for d in args.dtypes.split(",") for k in args.towers.split(",")):
        dtype = getattr(torch, dtype_name)
        if kind == "plain":
            towers = {m: copy.deepcopy(model.tower(m)).to(dtype).eval() for m in ("s1", "s2")}
        else:
            towers = {m: InferenceTower(model.tower(m), args.arch, dtype, cpu).module for m in ("s1", "s2")}

        def run():
            with torch.inference_mode():
                return [tower_output(towers[m], args.arch, model.normalizer(m)(x)).pooled for m, x in (("s1", x1), ("s2", x2))]

        with torch.inference_mode():  # FLOPs through module calls, so that every module is named
            layout = input_memory_format(towers["s1"])
            n1 = model.s1_normalizer(x1).to(dtype).contiguous(memory_format=layout)
            n2 = model.s2_normalizer(x2).to(dtype).contiguous(memory_format=layout)
            if kind == "plain":
                flops = flops_by_category(towers["s1"], lambda: (towers["s1"](n1), towers["s2"](n2)))
                plain_flops = flops
            else:
                # oneDNN's fused linear has no FLOP formula: the inference copies do the plain towers'
                # arithmetic, so their total is used and no per-category split is shown.
                if "plain_flops" not in locals():
                    plain = {m: copy.deepcopy(model.tower(m)).to(dtype).eval() for m in ("s1", "s2")}
                    plain_flops = flops_by_category(plain["s1"], lambda: (plain["s1"](n1.contiguous()), plain["s2"](n2.contiguous())))
                flops = {"total": sum(plain_flops.values())}
        run()  # warm-up
        totals, timers = [], []
        peak = gemm_peak_gflops(torch.bfloat16 if cpu_has_native_bf16() else torch.float32, torch.device("cpu"), repeats=3)
        for _ in range(args.repeats):
            timer = ModuleTimer(nn.ModuleDict(towers))
            start = time.perf_counter()
            run()
            totals.append(time.perf_counter() - start)
            timer.remove()
            timers.append(timer.self_time)
        best = min(range(len(totals)), key=lambda i: totals[i])
        total, self_time = totals[best], timers[best]
        self_time["other"] += total - sum(self_time.values())
        all_flops = sum(flops.values())
        print(f"\n## {dtype_name}, {kind} towers: {total:.3f} s per batch = {args.batch / total:.2f} pairs/s, "
              f"{all_flops / args.batch / 1e9:.2f} GFLOP per pair, {all_flops / total / 1e9:.0f} GFLOP/s overall "
              f"(bfloat16 GEMM peak measured now: {peak:.0f} GFLOP/s)")
        print(f"{'category':<32} {'seconds':>8} {'share':>6} {'GFLOP':>8} {'GFLOP/s':>8}")
        for cat, seconds in sorted(self_time.items(), key=lambda kv: -kv[1]):
            f = flops.get(cat, 0.0) if kind == "plain" else 0.0
            rate = f"{f / seconds / 1e9:8.0f}" if f and seconds > 0 else f"{'':>8}"
            print(f"{cat:<32} {seconds:8.3f} {100 * seconds / total:5.1f}% {f / 1e9:8.1f} {rate}")
        if args.ops:
            from torch.profiler import ProfilerActivity, profile

            with profile(activities=[ProfilerActivity.CPU]) as prof:
                run()
            print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=args.ops, max_name_column_width=44))
    return 0


if __name__ == "__main__":
    sys.exit(main())
