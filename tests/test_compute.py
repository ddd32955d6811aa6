"""How embed computes: dtype="auto", the inference copies of the towers, the parallel towers, and their
agreement with float32 on the real example pairs."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import synthetic_pair, tiny_model

from s1s2_encoders import load_backbone
from s1s2_encoders.models import compute
from s1s2_encoders.models.backbone import resolve_dtype
from s1s2_encoders.models.compute import (
    auto_dtype,
    choose_compute,
    cpu_has_native_bf16,
    parallel_towers_enabled,
    parse_dtype,
    run_towers,
)
from s1s2_encoders.models.fast import (
    WINDOW_CACHE_SIZES,
    InferenceTower,
    _window_permutation,
    cached_window_tensors,
    linear_gelu_available,
)

CPU = torch.device("cpu")
ARCHS = ["swin-t", "resnet18", "resnet50"]


def min_cosine(a, b) -> float:
    a, b = torch.as_tensor(np.asarray(a)), torch.as_tensor(np.asarray(b))
    return float(F.cosine_similarity(a.flatten(1).double(), b.flatten(1).double(), dim=1).min())


# ---------------------------------------------------------------------------------------------- choosing
@pytest.mark.parametrize(
    "device, native_cpu, cuda_bf16, expected, reason",
    [
        ("cpu", True, None, torch.bfloat16, "CPU with native bfloat16"),
        ("cpu", False, None, torch.float32, "CPU without native bfloat16 (no avx512_bf16/amx_bf16)"),
        ("cuda", None, True, torch.bfloat16, "CUDA device with native bfloat16"),
        ("cuda", None, False, torch.float32, "CUDA device without native bfloat16 (compute capability < 8.0)"),
        ("mps", None, None, torch.float32, "no bfloat16 fast path known for device type 'mps'"),
    ],
)
def test_auto_dtype_per_device(device, native_cpu, cuda_bf16, expected, reason):
    dtype, why = auto_dtype(torch.device(device), native_bf16_cpu=native_cpu, cuda_bf16=cuda_bf16)
    assert dtype == expected and why.startswith(reason)


@pytest.mark.parametrize(
    "flags, native",
    [({"avx512f", "avx512_bf16"}, True), ({"amx_tile", "amx_bf16"}, True), ({"avx512f", "avx512bw", "avx512_vnni"}, False), (set(), False)],
)
def test_native_bf16_is_read_from_cpu_flags(flags, native):
    assert cpu_has_native_bf16(flags) is native


def test_parse_dtype():
    assert parse_dtype("auto") is None
    with pytest.raises(ValueError, match=r"dtype=None is not accepted: use 'auto' \(the default\) or 'float32'"):
        parse_dtype(None)
    assert parse_dtype("bf16") == torch.bfloat16 and parse_dtype(torch.float32) == torch.float32
    with pytest.raises(ValueError, match=r"dtype must be 'float32', 'bfloat16' or 'float16', got 'int8' \(or 'auto'"):
        parse_dtype("int8")
    with pytest.raises(ValueError, match=r"resolve_dtype cannot decide 'auto' without a device"):
        resolve_dtype("auto")


def test_environment_overrides_auto(monkeypatch):
    monkeypatch.setenv("S1S2_DTYPE", "float32")
    choice = choose_compute("auto", CPU)
    assert (choice.dtype, choice.mode, choice.reason) == (torch.float32, "inference-copy", "S1S2_DTYPE=float32")
    assert choose_compute("bfloat16", CPU).dtype == torch.bfloat16  # an explicit dtype wins over the variable
    monkeypatch.setenv("S1S2_DTYPE", "int8")
    with pytest.raises(ValueError, match=r"environment variable S1S2_DTYPE='int8': dtype must be"):
        choose_compute("auto", CPU)


def test_explicit_float32_runs_the_plain_towers_and_float16_autocast():
    assert choose_compute("float32", CPU).mode == "plain"
    assert choose_compute("float16", CPU).mode == "autocast"
    assert choose_compute("bfloat16", CPU).mode == "inference-copy"


def test_embed_defaults_to_auto_and_says_what_it_chose(real_pair, caplog, monkeypatch):
    monkeypatch.setattr(compute, "_logged", set())
    model = tiny_model("resnet18")
    s1, s2 = real_pair
    with caplog.at_level(logging.INFO, logger="s1s2_encoders"):
        model.embed(s1, s2, s2_offset=1000)
        model.embed(s1, s2, s2_offset=1000)
    expected, reason = auto_dtype(CPU)
    choice = model.last_compute
    assert (choice.requested, choice.dtype, choice.device, choice.reason) == ("auto", expected, CPU, reason)
    messages = [r.getMessage() for r in caplog.records if r.name == "s1s2_encoders"]
    assert messages == [f"embed computes in {choice}"]  # once, not per call
    model.embed(s1, s2, s2_offset=1000, dtype="float32")
    assert model.last_compute.dtype == torch.float32 and model.last_compute.mode == "plain"


# ---------------------------------------------------------------------------------------------- agreement
@pytest.mark.parametrize("arch", ARCHS)
def test_bfloat16_agrees_with_float32_on_the_real_pairs(arch, real_batch):
    """The bar for dtype="auto": cosine >= 0.999 per sample and per modality, pooled and dense."""
    model = tiny_model(arch)
    s1, s2 = real_batch
    fp32 = model.embed(s1, s2, s2_offset=1000, dtype="float32", per_modality=True)
    bf16 = model.embed(s1, s2, s2_offset=1000, dtype="bfloat16", per_modality=True)
    for m in ("s1", "s2"):
        assert bf16[m].dtype == np.float32
        assert min_cosine(fp32[m], bf16[m]) >= 0.999
    dense32 = model.embed_dense(s1, s2, s2_offset=1000, dtype="float32")
    dense16 = model.embed_dense(s1, s2, s2_offset=1000, dtype="bfloat16")
    for stride in (4, 8, 16, 32):
        assert min_cosine(dense32[stride], dense16[stride]) >= 0.999


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("size", [(224, 224), (96, 160), (50, 77)])
def test_float32_inference_copy_matches_the_timm_tower(arch, size, monkeypatch):
    """Same mathematics: the float32 inference copy (window gather, pre-summed bias, fused GELU, folded
    BatchNorm) gives the plain tower's embedding, also at sizes that need timm's window padding."""
    model = tiny_model(arch)
    s1, s2 = synthetic_pair((2,), *size, seed=2)
    monkeypatch.setenv("S1S2_DTYPE", "float32")
    fast = model.embed(s1, s2, s2_offset=0, per_modality=True)
    assert model.last_compute.mode == "inference-copy" and model.last_compute.dtype == torch.float32
    plain = model.embed(s1, s2, s2_offset=0, dtype="float32", per_modality=True)
    for m in ("s1", "s2"):
        np.testing.assert_allclose(fast[m], plain[m], rtol=1e-4, atol=1e-5)
    dense_fast = model.embed_dense(s1, s2, s2_offset=0)
    dense_plain = model.embed_dense(s1, s2, s2_offset=0, dtype="float32")
    for stride in (4, 8, 16, 32):
        np.testing.assert_allclose(dense_fast[stride], dense_plain[stride], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("size, window, shift", [((14, 14), (7, 7), (3, 3)), ((16, 9), (7, 7), (3, 3)), ((8, 12), (7, 7), (0, 0))])
def test_window_permutation_is_timms_roll_pad_and_partition(size, window, shift):
    from timm.models.swin_transformer import window_partition, window_reverse

    h, w = size
    grid = torch.arange(h * w, dtype=torch.float32).view(1, h, w, 1)
    rolled = torch.roll(grid, shifts=(-shift[0], -shift[1]), dims=(1, 2)) if any(shift) else grid
    hp, wp = -(-h // window[0]) * window[0], -(-w // window[1]) * window[1]
    padded = F.pad(rolled, (0, 0, 0, wp - w, 0, hp - h), value=h * w)  # h*w marks a padding token
    expected = window_partition(padded, window).reshape(-1).long()
    gather, scatter = _window_permutation(h, w, window, shift, CPU)
    assert torch.equal(gather, expected)
    # scatter undoes it like timm's window reverse + crop + roll back does: every token back in place
    back = window_reverse(expected.float().view(-1, *window, 1), window, hp, wp)[:, :h, :w]
    if any(shift):
        back = torch.roll(back, shifts=shift, dims=(1, 2))
    assert torch.equal(back.reshape(-1).long(), torch.arange(h * w))
    assert torch.equal(expected[scatter], torch.arange(h * w))


def test_batchnorm_folding_and_channels_last():
    model = tiny_model("resnet50")
    copied = InferenceTower(model.s2, "resnet50", torch.bfloat16, CPU).module
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in copied.modules())
    assert copied.conv1.weight.is_contiguous(memory_format=torch.channels_last)
    assert all(p.dtype == torch.bfloat16 and not p.requires_grad for p in copied.parameters())
    # stem + 3 per bottleneck x 4 stages + 4 downsample paths, each conv now with a bias
    convs = [m for m in copied.modules() if isinstance(m, torch.nn.Conv2d)]
    assert len(convs) == 1 + 3 * 4 + 4 and all(c.bias is not None for c in convs)
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in model.s2.modules())  # the model itself is untouched


def test_swin_copy_is_patched_and_the_model_is_not():
    from timm.models.swin_transformer import SwinTransformerBlock

    model = tiny_model("swin-t")
    for dtype in (torch.float32, torch.bfloat16):
        copied = InferenceTower(model.s1, "swin-t", dtype, CPU).module
        blocks = [m for m in copied.modules() if isinstance(m, SwinTransformerBlock)]
        assert len(blocks) == 8 and all("_attn" in b.__dict__ for b in blocks)
        assert all(("forward" in b.mlp.__dict__) == linear_gelu_available(dtype) for b in blocks)
    assert not any("_attn" in b.__dict__ for b in model.s1.modules() if isinstance(b, SwinTransformerBlock))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_fused_linear_gelu_is_used_exactly_where_this_cpu_runs_it(dtype):
    """oneDNN has no bfloat16 inner product on CPUs without AVX-512: the fused op must then be off
    for bfloat16 (it raised "could not create a primitive descriptor" inside Swin before)."""
    x, weight, bias = torch.randn(4, 8).to(dtype), torch.randn(12, 8).to(dtype), torch.randn(12).to(dtype)
    try:
        fused = torch.ops.mkldnn._linear_pointwise(x, weight, bias, "gelu", [], "none")
        works = bool(torch.allclose(fused.float(), F.gelu(F.linear(x, weight, bias)).float(), rtol=0.1, atol=0.05))
    except RuntimeError:
        works = False
    assert linear_gelu_available(dtype) is works


def test_bfloat16_by_name_runs_everywhere_and_warns_where_it_is_emulated(real_pair, monkeypatch):
    model = tiny_model("swin-t")
    s1, s2 = real_pair
    reference = model.embed(s1, s2, s2_offset=1000, dtype="float32")
    monkeypatch.setattr(compute, "cpu_has_native_bf16", lambda flags=None: False)
    with pytest.warns(UserWarning, match=r"bfloat16 on this CPU is emulated \(no avx512_bf16 / amx_bf16\).*dtype='auto' picks float32"):
        emulated = model.embed(s1, s2, s2_offset=1000, dtype="bfloat16")
    assert model.last_compute.dtype == torch.bfloat16 and min_cosine(emulated, reference) >= 0.999
    auto = choose_compute("auto", CPU)
    assert auto.dtype == torch.float32 and auto.mode == "inference-copy"  # the fastest exact path
    monkeypatch.setattr(compute, "cpu_has_native_bf16", lambda flags=None: True)
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        model.embed(s1, s2, s2_offset=1000, dtype="bfloat16")


# ---------------------------------------------------------------------------------------------- freshness
def _relative_error(a, b) -> float:
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return float(np.abs(a - b).max() / np.abs(b).max())


def _edits():
    """In-place edits of weights and buffers that leave no trace in the tensors' version counters (or
    that do): each must be seen by the next default embed."""
    def data_mul(model):
        for p in model.s2.parameters():
            p.data.mul_(1.5)

    def batchnorm_data(model):
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.data.add_(0.05)
                m.running_var.data.mul_(3.0)
            elif isinstance(m, torch.nn.LayerNorm):
                m.weight.data.mul_(-1.0)

    def copy_pattern(model):
        with torch.no_grad():
            for p in model.s1.parameters():
                p.copy_(p.flip(0) if p.dim() else p)

    def vector_to_parameters(model):
        vector = torch.nn.utils.parameters_to_vector(model.parameters())
        torch.nn.utils.vector_to_parameters(vector * 0.5 + 0.01, model.parameters())

    def load_state_dict(model):
        model.load_state_dict(tiny_model(model.config.architecture, seed=7).state_dict())

    return {f.__name__: f for f in (data_mul, batchnorm_data, copy_pattern, vector_to_parameters, load_state_dict)}


@pytest.mark.parametrize("edit", list(_edits()))
@pytest.mark.parametrize("arch", ["swin-t", "resnet18"])
def test_the_default_path_never_computes_with_weights_the_model_no_longer_has(arch, edit, real_pair):
    model = tiny_model(arch)
    s1, s2 = real_pair
    model.embed(s1, s2, s2_offset=1000)  # builds and caches the fast engine
    model.embed(s1, s2, s2_offset=1000, dtype="bfloat16")
    _edits()[edit](model)
    reference = model.embed(s1, s2, s2_offset=1000, dtype="float32")
    # bfloat16 rounding costs up to ~3 % of the largest value on these tiny towers; stale weights cost
    # 40-50 %. "auto" is float32 on CPUs without native bf16 and bfloat16 where the CPU has it.
    auto_bar = 5e-2 if model.inference_engine("auto").compute.dtype == torch.bfloat16 else 1e-2
    for dtype, bar in (("auto", auto_bar), ("bfloat16", 5e-2)):
        fast = model.embed(s1, s2, s2_offset=1000, dtype=dtype)
        assert _relative_error(fast, reference) < bar, (dtype, _relative_error(fast, reference))
    dense = model.embed_dense(s1, s2, s2_offset=1000)
    dense_reference = model.embed_dense(s1, s2, s2_offset=1000, dtype="float32")
    errors = [_relative_error(dense[s], dense_reference[s]) for s in (4, 8, 16, 32)]
    assert max(errors) < auto_bar, errors


def test_an_engine_is_a_snapshot_until_refreshed(real_pair):
    model = tiny_model("resnet18")
    s1, s2 = real_pair
    engine = model.inference_engine()  # "auto"
    before = engine.embed(s1, s2, s2_offset=1000)
    np.testing.assert_allclose(before, model.embed(s1, s2, s2_offset=1000), rtol=1e-6, atol=1e-6)
    for p in model.parameters():
        p.data.mul_(1.2)
    np.testing.assert_array_equal(engine.embed(s1, s2, s2_offset=1000), before)  # the snapshot
    after = engine.refresh().embed(s1, s2, s2_offset=1000)
    assert _relative_error(after, model.embed(s1, s2, s2_offset=1000, dtype="float32")) < 1e-2
    assert not np.allclose(after, before)
    # float32 on the model's device computes with the model's own towers: never a stale copy
    live = model.inference_engine("float32")
    assert live.own_towers and live.tower("s1") is model.s1


def test_a_changed_tower_layout_rebuilds_the_copy(real_pair):
    model = tiny_model("resnet18")
    s1, s2 = real_pair
    model.embed(s1, s2, s2_offset=1000)
    model.s1.conv1 = torch.nn.Conv2d(2, 64, kernel_size=3, stride=2, padding=1, bias=False)
    reference = model.embed(s1, s2, s2_offset=1000, dtype="float32")
    assert _relative_error(model.embed(s1, s2, s2_offset=1000), reference) < 1e-2


def test_models_with_cached_engines_pickle_and_deepcopy_without_them(real_pair, tmp_path):
    import copy

    model = tiny_model("swin-t")
    s1, s2 = real_pair
    keys = set(model.state_dict())
    before = model.embed(s1, s2, s2_offset=1000)
    assert len(model._engines) == 1
    assert set(model.state_dict()) == keys and all(p.dtype == torch.float32 for p in model.parameters())
    clone = copy.deepcopy(model)
    assert len(clone._engines) == 0
    torch.save(model, tmp_path / "model.pt")
    loaded = torch.load(tmp_path / "model.pt", weights_only=False)
    assert len(loaded._engines) == 0
    np.testing.assert_array_equal(loaded.embed(s1, s2, s2_offset=1000), before)
    np.testing.assert_array_equal(clone.embed(s1, s2, s2_offset=1000), before)


def test_window_caches_are_bounded_for_many_input_sizes():
    """Variable-size workloads keep flat memory: each block keeps at most WINDOW_CACHE_SIZES sizes."""
    model = tiny_model("swin-t")
    sizes = [32 * k for k in range(1, 8)]

    def held_after(run_sizes):
        engine = model.inference_engine()
        for size in run_sizes:
            _, s2 = synthetic_pair((1,), size, 64)
            engine.embed(s2=s2)
        return cached_window_tensors(engine.tower("s2"))

    entries, held = held_after(sizes)
    assert entries == 2 * 8 * WINDOW_CACHE_SIZES  # 8 blocks, window indices + summed bias per size
    # exactly what the last WINDOW_CACHE_SIZES sizes need, each measured alone: nothing else is kept
    assert held == sum(held_after([size])[1] for size in sizes[-WINDOW_CACHE_SIZES:])


# ---------------------------------------------------------------------------------------------- the caller's model
def test_embed_on_another_device_leaves_the_model_where_it_is_and_in_its_mode():
    """Computing on another device uses a copy there ("meta" stands in for a GPU: it computes shapes)."""
    from s1s2_encoders.models.engine import ModalityBatch

    for arch in ("swin-t", "resnet18"):
        model = tiny_model(arch)
        model.train()
        pointers = [p.data_ptr() for p in model.parameters()]
        s1, s2 = synthetic_pair((2,), 64, 64)
        for dtype in ("float32", "auto"):
            engine = model.inference_engine(dtype, device="meta")
            if dtype == "auto" and engine.compute.mode == "inference-copy":
                continue  # the window gathers need values; the plain copy shows the device handling
            out = engine.encode_batch({"s1": ModalityBatch(torch.from_numpy(s1)), "s2": ModalityBatch(torch.from_numpy(s2))},
                                      dense=True)
            assert out["s2"].pooled.device.type == "meta" and out["s2"].pooled.shape == (2, model.embed_dims["s2"])
        assert all(p.device.type == "cpu" for p in model.parameters())
        assert [p.data_ptr() for p in model.parameters()] == pointers and model.training
        with pytest.raises(Exception):
            model.embed(s1, s2, device="meta", dtype="float32")  # meta tensors cannot come back as numpy
        assert all(p.device.type == "cpu" for p in model.parameters()) and model.training


def test_embed_keeps_the_train_mode_of_every_submodule(real_pair):
    model = tiny_model("resnet18")
    model.train()
    model.s2.eval()  # a user's partly frozen model: S2 tower in eval mode, S1 training
    s1, s2 = real_pair
    for dtype in ("float32", "auto", "bfloat16"):
        model.embed(s1, s2, s2_offset=1000, dtype=dtype)
        assert model.training and model.s1.training and not model.s2.training
        assert all(m.training for m in model.s1.modules()) and not any(m.training for m in model.s2.modules())


# ---------------------------------------------------------------------------------------------- parallel towers
def test_parallel_towers_policy(monkeypatch):
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        assert parallel_towers_enabled(CPU, 2)
        assert not parallel_towers_enabled(CPU, 1)
        assert not parallel_towers_enabled(torch.device("cuda"), 2)
        monkeypatch.setenv("S1S2_PARALLEL_TOWERS", "0")
        assert not parallel_towers_enabled(CPU, 2)
        monkeypatch.delenv("S1S2_PARALLEL_TOWERS")
        torch.set_num_threads(1)
        assert not parallel_towers_enabled(CPU, 2)
    finally:
        torch.set_num_threads(threads)


def test_parallel_and_serial_towers_agree_and_threads_are_restored(real_batch, monkeypatch):
    model = tiny_model("swin-t")
    s1, s2 = real_batch
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        parallel = model.embed(torch.from_numpy(s1), torch.from_numpy(s2), s2_offset=1000, dtype="float32")
        assert torch.get_num_threads() == 2
        # grad mode is thread-local: the helper thread must enter inference mode itself (the
        # float32 towers have parameters that require grad)
        assert not parallel.requires_grad
        monkeypatch.setenv("S1S2_PARALLEL_TOWERS", "0")
        serial = model.embed(torch.from_numpy(s1), torch.from_numpy(s2), s2_offset=1000, dtype="float32")
        torch.testing.assert_close(parallel, serial, rtol=1e-5, atol=1e-5)
    finally:
        torch.set_num_threads(threads)


def test_an_error_in_the_helper_thread_reaches_the_caller():
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(2)

        def broken():
            raise RuntimeError("tower failed")

        with pytest.raises(RuntimeError, match="tower failed"):
            run_towers({"s1": broken, "s2": lambda: 1}, CPU, torch.inference_mode)
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(threads)


# ---------------------------------------------------------------------------------------------- real sizes
@pytest.mark.slow
@pytest.mark.parametrize("name", ["swin-s1s2", "resnet50-s1s2"])
def test_real_size_bfloat16_agrees_with_float32(name, real_batch):
    torch.manual_seed(0)
    model = load_backbone(name, pretrained=False)
    s1, s2 = real_batch
    fp32 = model.embed(s1, s2, s2_offset=1000, dtype="float32", per_modality=True)
    auto = model.embed(s1, s2, s2_offset=1000, per_modality=True)
    bf16 = model.embed(s1, s2, s2_offset=1000, dtype="bfloat16", per_modality=True)
    for m in ("s1", "s2"):
        assert min_cosine(fp32[m], bf16[m]) >= 0.999
        assert min_cosine(fp32[m], auto[m]) >= 0.999
    dense32 = model.embed_dense(s1, s2, s2_offset=1000, dtype="float32")
    dense16 = model.embed_dense(s1, s2, s2_offset=1000, dtype="bfloat16")
    for stride in (4, 8, 16, 32):
        assert min_cosine(dense32[stride], dense16[stride]) >= 0.999
