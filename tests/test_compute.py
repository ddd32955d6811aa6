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
from s1s2_encoders.models.fast import _fold_batchnorms, _linear_gelu_available, _window_permutation, inference_tower

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
    assert parse_dtype("auto") is None and parse_dtype(None) is None
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
    copied = inference_tower(model.s2, "resnet50", torch.bfloat16, CPU)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in copied.modules())
    assert copied.conv1.weight.is_contiguous(memory_format=torch.channels_last)
    assert all(p.dtype == torch.bfloat16 and not p.requires_grad for p in copied.parameters())
    # stem + 3 per bottleneck x 4 stages + 4 downsample paths
    assert _fold_batchnorms(tiny_model("resnet50").s1.eval()) == 1 + 3 * 4 + 4
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in model.s2.modules())  # the model itself is untouched


def test_swin_copy_is_patched_and_the_model_is_not():
    from timm.models.swin_transformer import SwinTransformerBlock

    model = tiny_model("swin-t")
    copied = inference_tower(model.s1, "swin-t", torch.bfloat16, CPU)
    blocks = [m for m in copied.modules() if isinstance(m, SwinTransformerBlock)]
    assert len(blocks) == 8 and all("_attn" in b.__dict__ for b in blocks)
    assert all(("forward" in b.mlp.__dict__) == _linear_gelu_available() for b in blocks)
    assert not any("_attn" in b.__dict__ for b in model.s1.modules() if isinstance(b, SwinTransformerBlock))


# ---------------------------------------------------------------------------------------------- caching
def test_inference_copies_are_cached_hidden_and_rebuilt_when_weights_change(real_pair):
    model = tiny_model("resnet18")
    keys = set(model.state_dict())
    s1, s2 = real_pair
    first = model.embed(s1, s2, s2_offset=1000, dtype="bfloat16")
    copy_s1 = model.compute_tower("s1", model.last_compute)
    model.embed(s1, s2, s2_offset=1000, dtype="bfloat16")
    assert model.compute_tower("s1", model.last_compute) is copy_s1  # reused, not rebuilt
    assert set(model.state_dict()) == keys and all(p.dtype == torch.float32 for p in model.parameters())
    assert len(model._inference_towers) == 2

    other = tiny_model("resnet18", seed=1)
    model.load_state_dict(other.state_dict())
    after_load = model.embed(s1, s2, s2_offset=1000, dtype="bfloat16")
    assert model.compute_tower("s1", model.last_compute) is not copy_s1
    np.testing.assert_array_equal(after_load, other.embed(s1, s2, s2_offset=1000, dtype="bfloat16"))
    assert not np.allclose(after_load, first)

    with torch.no_grad():
        model.s2.conv1.weight.mul_(2)  # in place: bumps the version counter
    changed = model.embed(s2=s2, s2_offset=1000, dtype="bfloat16")
    reference = model.embed(s2=s2, s2_offset=1000, dtype="float32")
    assert min_cosine(changed, reference) >= 0.999
    assert not np.allclose(changed, after_load[:, 512:])


def test_models_with_cached_copies_pickle_and_deepcopy_without_them(real_pair, tmp_path):
    import copy

    model = tiny_model("swin-t")
    s1, s2 = real_pair
    before = model.embed(s1, s2, s2_offset=1000)
    assert len(model._inference_towers) == 2
    clone = copy.deepcopy(model)
    assert len(clone._inference_towers) == 0
    torch.save(model, tmp_path / "model.pt")
    loaded = torch.load(tmp_path / "model.pt", weights_only=False)
    assert len(loaded._inference_towers) == 0
    np.testing.assert_array_equal(loaded.embed(s1, s2, s2_offset=1000), before)
    np.testing.assert_array_equal(clone.embed(s1, s2, s2_offset=1000), before)


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
