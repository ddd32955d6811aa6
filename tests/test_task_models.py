"""Task models: classifier and segmenter shapes on real pairs of any size, SwinUNet skip taps,
strict save/load, backbone freezing, fusion variants, nodata masking and head-config validation."""

import numpy as np
import pytest
import torch
from conftest import TERRAMESH_IDS, synthetic_pair, terramesh_pair, tiny_config, tiny_model

from s1s2_encoders import (
    DFC2020_CLASS_COLORS,
    DFC2020_CLASS_NAMES,
    CheckpointError,
    ConfigError,
    InputShapeError,
    ModelConfig,
    S1S2Classifier,
    S1S2Segmenter,
    create_model,
    load_backbone,
    load_model,
    task_config,
)
from s1s2_encoders.models.heads import pixel_shuffle_nhwc, swin_skip_features

UNET = {"channels": [16, 16, 8]}


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def tiny_segmenter(architecture="swin-t", fusion="late", seed=0, normalization="sslt_channel_max"):
    torch.manual_seed(seed)
    decoder = UNET if architecture != "swin-t" else {"drop_path_rate": 0.0}
    return create_model(task_config(tiny_config(architecture, normalization), "segmentation", fusion=fusion, decoder=decoder))


def tiny_classifier(architecture="resnet18", fusion="late", multi_label=False, seed=0, normalization="sslt_channel_max"):
    torch.manual_seed(seed)
    return create_model(task_config(tiny_config(architecture, normalization), "classification", fusion=fusion, multi_label=multi_label))


@pytest.fixture(scope="module", params=["swin-t", "resnet18"])
def segmenter(request):
    return tiny_segmenter(request.param).eval()


def _stack(ids, crop=None):
    pairs = [terramesh_pair(i) for i in ids]
    s1, s2 = np.stack([p[0] for p in pairs]), np.stack([p[1] for p in pairs])
    if crop is not None:
        s1, s2 = s1[..., : crop[0], : crop[1]], s2[..., : crop[0], : crop[1]]
    return s1, s2


# ---------------------------------------------------------------------------------------- shapes
@pytest.mark.parametrize("size", [(224, 224), (200, 150), (37, 91)])
def test_segmenter_predicts_a_probability_map_of_the_input_size_for_real_pairs(segmenter, size):
    s1, s2 = _stack(TERRAMESH_IDS[1:], crop=size)
    probs = segmenter.predict(s1, s2, s2_offset=1000, batch_size=1)
    assert isinstance(probs, np.ndarray) and probs.dtype == np.float32
    assert probs.shape == (2, 8, *size)
    assert np.isfinite(probs).all()
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-5)
    # single sample without batch dimension -> batch of one, same values as inside the batch
    alone = segmenter.predict(s1[1], s2[1], s2_offset=1000)
    assert alone.shape == (1, 8, *size)
    np.testing.assert_allclose(alone[0], probs[1], rtol=1e-4, atol=1e-5)
    assert not np.allclose(probs[0], probs[1])  # different scenes, different maps


def test_predict_equals_softmax_of_forward_and_forward_crops_to_the_input(segmenter):
    s1, s2 = _stack(TERRAMESH_IDS[:2], crop=(200, 150))
    x1 = torch.from_numpy(s1.astype(np.float32))
    x2 = torch.from_numpy(s2.astype(np.float32)) - 1000
    with torch.no_grad():
        logits = segmenter(x1, x2)
    assert logits.shape == (2, 8, 200, 150)
    np.testing.assert_allclose(segmenter.predict(s1, s2, s2_offset=1000, dtype="float32"), torch.softmax(logits, 1).numpy(), rtol=1e-4, atol=1e-6)


def test_tensor_in_tensor_out(segmenter):
    s1, s2 = terramesh_pair()
    out = segmenter.predict(torch.from_numpy(s1[:, :64, :96]), torch.from_numpy(s2[:, :64, :96]), s2_offset=1000)
    assert isinstance(out, torch.Tensor) and out.shape == (1, 8, 64, 96)


@pytest.mark.parametrize("fusion, towers, in_chans", [("late", ["s1", "s2"], [2, 13]), ("early", ["s1s2"], [15]), ("s1", ["s1"], [2]), ("s2", ["s2"], [13])])
@pytest.mark.parametrize("architecture", ["swin-t", "resnet18"])
def test_fusion_variants_build_only_the_towers_they_use(architecture, fusion, towers, in_chans):
    seg = tiny_segmenter(architecture, fusion)
    cls = tiny_classifier(architecture, fusion)
    for model in (seg, cls):
        assert list(model.towers) == towers
        first = {"swin-t": "patch_embed.proj.weight", "resnet18": "conv1.weight"}[architecture]
        assert [model.towers[t].state_dict()[first].shape[1] for t in towers] == in_chans
    assert list(seg.decoders) == towers
    s1, s2 = terramesh_pair()
    inputs = {"s1": s1[:, :64, :64], "s2": s2[:, :64, :64]}
    given = {m: inputs[m] for m in seg.modalities}
    assert seg.predict(**given, s2_offset=1000).shape == (1, 8, 64, 64)
    assert cls.predict(**given, s2_offset=1000).shape == (1, 8)


def test_missing_or_extra_modality_is_refused_with_a_clear_message():
    s1, s2 = terramesh_pair()
    with pytest.raises(InputShapeError, match=r"this model \(late fusion\) reads s1 and s2; s2 is missing"):
        tiny_classifier("resnet18", "late").predict(s1=s1)
    with pytest.raises(InputShapeError, match=r"this model \(s1 fusion\) reads only s1; do not pass s2"):
        tiny_classifier("resnet18", "s1").predict(s1=s1, s2=s2)
    with pytest.raises(InputShapeError, match=r"this early-fusion model needs s2"):
        tiny_segmenter("resnet18", "early")(torch.zeros(1, 2, 32, 32))


# ---------------------------------------------------------------------------------------- architecture facts
def test_real_size_swin_segmenter_has_exactly_the_used_parameters_of_the_original():
    """reference_facts §1.4: of the original's 140.2 M parameters, 83.07 M are used in forward;
    ours has exactly those (two Swin-T towers, two decoders, the fusion head) and nothing else."""
    model = create_model(task_config(ModelConfig(), "segmentation"))
    assert sum(p.numel() for p in model.parameters()) == 83_070_216
    assert sum(p.numel() for p in model.towers.parameters()) == 2 * 27_526_266
    assert model.config.head["decoder"] == {
        "kind": "swin-unet", "depths": [6, 2, 2], "num_heads": [12, 6, 3], "window_size": 7, "drop_path_rate": 0.1,
    }
    head = model.head
    assert head.expand.weight.shape == (3072, 192) and head.expand.bias is None
    assert head.classifier.weight.shape == (8, 192, 1, 1) and head.classifier.bias is None


@pytest.mark.parametrize("architecture", ["swin-t", "resnet18"])
def test_every_parameter_is_used_in_forward(architecture):
    """No dead weights: one backward pass reaches every parameter of the segmenter."""
    model = tiny_segmenter(architecture).train()
    logits = model(torch.randn(2, 2, 64, 64) * 5 - 12, torch.rand(2, 13, 64, 64) * 3000)
    logits.square().mean().backward()
    unused = [n for n, p in model.named_parameters() if p.grad is None]
    assert unused == []


def test_swin_skip_taps_equal_forward_hooks_on_patch_embed_and_downsample(real_pair):
    """The decoder's skips are what hooks on patch_embed and layers[i].downsample capture
    (reference_facts §1.6), and the bottleneck is forward_features (final norm applied)."""
    model = tiny_segmenter("swin-t").eval()
    tower = model.towers["s2"]
    x = model.normalize("s2", torch.from_numpy(real_pair[1].astype(np.float32))[None] - 1000)
    captured = []
    handles = [tower.patch_embed.register_forward_hook(lambda m, i, o: captured.append(o))]
    handles += [tower.layers[i].downsample.register_forward_hook(lambda m, i, o: captured.append(o)) for i in (1, 2)]
    with torch.no_grad():
        reference_bottleneck = tower.forward_features(x)
        for h in handles:
            h.remove()
        skips, bottleneck = swin_skip_features(tower, x)
    assert [tuple(s.shape) for s in skips] == [(1, 56, 56, 16), (1, 28, 28, 32), (1, 14, 14, 64)]
    assert len(captured) == 3
    for ours, hooked in zip(skips, captured):
        assert torch.equal(ours, hooked)
    assert bottleneck.shape == (1, 7, 7, 128) and torch.equal(bottleneck, reference_bottleneck)


def test_pixel_shuffle_lays_out_channels_as_block_row_block_column_channel():
    # one token with 2x2x2 = 8 channels [0..7] -> 2x2 block, 2 channels each, row-major blocks
    x = torch.arange(8.0).view(1, 1, 1, 8)
    out = pixel_shuffle_nhwc(x, 2)
    assert out.shape == (1, 2, 2, 2)
    assert out[0, 0, 0].tolist() == [0, 1] and out[0, 0, 1].tolist() == [2, 3]
    assert out[0, 1, 0].tolist() == [4, 5] and out[0, 1, 1].tolist() == [6, 7]


# ---------------------------------------------------------------------------------------- checkpoints
@pytest.mark.parametrize("kind", ["segmentation", "classification"])
def test_save_and_load_model_round_trip_is_exact(kind, tmp_path, real_pair):
    model = tiny_segmenter("swin-t") if kind == "segmentation" else tiny_classifier("resnet18", multi_label=True)
    folder = model.save_pretrained(tmp_path / "finetuned")
    loaded = load_model(folder)
    assert type(loaded) is type(model) and not loaded.training
    assert loaded.config.to_dict() == model.config.to_dict()
    assert loaded.config.task == kind and loaded.task == kind
    assert loaded.class_names == DFC2020_CLASS_NAMES and loaded.class_colors == DFC2020_CLASS_COLORS
    for key, value in model.state_dict().items():
        assert torch.equal(value, loaded.state_dict()[key]), key
    s1, s2 = real_pair
    np.testing.assert_array_equal(loaded.predict(s1, s2, s2_offset=1000), model.predict(s1, s2, s2_offset=1000))


def test_load_model_is_strict_and_refuses_backbones(tmp_path):
    from safetensors.torch import load_file, save_file

    folder = tiny_segmenter("resnet18").save_pretrained(tmp_path / "seg")
    weights = load_file(str(folder / "model.safetensors"))
    weights.pop("head.classifier.weight")
    save_file(weights, str(folder / "model.safetensors"))
    with pytest.raises(CheckpointError, match=r"1 missing key\(s\): head.classifier.weight"):
        load_model(folder)
    backbone_folder = tiny_model("resnet18").save_pretrained(tmp_path / "backbone")
    with pytest.raises(ConfigError, match=r"is a backbone \(task 'backbone'\), not a fine-tuned model; load it with load_backbone\(\)"):
        load_model(backbone_folder)
    with pytest.raises(ConfigError, match=r"config describes a segmentation model, not a backbone; use load_model\(\)"):
        load_backbone(folder)


def test_weights_file_has_no_duplicated_or_dead_encoder_keys(tmp_path):
    from safetensors.torch import load_file

    folder = tiny_segmenter("swin-t").save_pretrained(tmp_path / "seg")
    prefixes = {k.split(".")[0] + "." + k.split(".")[1] for k in load_file(str(folder / "model.safetensors"))}
    assert prefixes == {"towers.s1", "towers.s2", "decoders.s1", "decoders.s2", "head.expand", "head.norm", "head.classifier"}


# ---------------------------------------------------------------------------------------- from a backbone
def test_from_backbone_copies_the_towers_and_the_classifier_pools_like_embed(real_pair):
    backbone = tiny_model("swin-t", seed=3)
    classifier = S1S2Classifier.from_backbone(backbone, multi_label=True).eval()  # Swin-T has drop_path 0.1
    assert classifier.multi_label and classifier.config.provenance["backbone"]["name"] == "tiny-swin-t"
    s1, s2 = real_pair
    x1 = torch.from_numpy(s1.astype(np.float32))[None]
    x2 = torch.from_numpy(s2.astype(np.float32))[None] - 1000
    with torch.no_grad():
        pooled = classifier.pooled_features({"s1": classifier.normalize("s1", x1), "s2": classifier.normalize("s2", x2)})
    np.testing.assert_allclose(pooled.numpy(), backbone.embed(s1, s2, s2_offset=1000, dtype="float32"), rtol=1e-5, atol=1e-5)
    probs = classifier.predict(s1, s2, s2_offset=1000, dtype="float32")
    expected = torch.sigmoid(classifier.head(pooled)).detach().numpy()
    np.testing.assert_allclose(probs, expected, rtol=1e-5, atol=1e-6)
    # and back: the towers as a backbone embed exactly as before
    np.testing.assert_array_equal(classifier.to_backbone().embed(s1, s2, s2_offset=1000), backbone.embed(s1, s2, s2_offset=1000))


def test_from_backbone_folder_for_a_single_modality_segmenter(tmp_path):
    backbone = tiny_model("resnet18", seed=5)
    folder = backbone.save_pretrained(tmp_path / "bb")
    seg = S1S2Segmenter.from_backbone(folder, fusion="s2", decoder=UNET, class_names=["water", "land"])
    assert list(seg.towers) == ["s2"] and seg.class_names == ("water", "land") and len(seg.class_colors) == 2
    for key, value in backbone.s2.state_dict().items():
        assert torch.equal(seg.towers["s2"].state_dict()[key], value)
    with pytest.raises(ConfigError, match=r"an early-fusion model has one tower on the 15 stacked S1\+S2 channels"):
        S1S2Segmenter.from_backbone(backbone, fusion="early")


# ---------------------------------------------------------------------------------------- freezing
def test_frozen_backbone_trains_only_the_head_and_keeps_batchnorm_statistics():
    model = tiny_segmenter("resnet18").freeze_backbone()
    assert model.backbone_frozen
    assert all(not p.requires_grad for p in model.backbone_parameters())
    head = list(model.head_parameters())
    assert head and all(p.requires_grad for p in head)
    assert len(head) + len(list(model.backbone_parameters())) == len(list(model.parameters()))
    model.train()
    assert model.training and not model.towers.training and model.decoders.training
    before = {k: v.clone() for k, v in model.towers.state_dict().items()}
    head_before = [p.detach().clone() for p in model.head_parameters()]
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    logits = model(torch.randn(2, 2, 64, 64) * 5 - 12, torch.rand(2, 13, 64, 64) * 3000)
    torch.nn.functional.cross_entropy(logits, torch.randint(0, 8, (2, 64, 64))).backward()
    optimizer.step()
    for key, value in model.towers.state_dict().items():
        assert torch.equal(value, before[key]), key  # weights and BN running stats untouched
    assert any(not torch.equal(a, b) for a, b in zip(head_before, model.head_parameters()))
    model.freeze_backbone(False)
    assert all(p.requires_grad for p in model.parameters()) and model.towers.training


# ---------------------------------------------------------------------------------------- inputs
def test_band_reordering_and_probability_semantics(real_pair):
    s1, s2 = real_pair
    single = tiny_classifier("resnet18")
    multi = tiny_classifier("resnet18", multi_label=True)
    p = single.predict(s1, s2, s2_offset=1000)
    np.testing.assert_allclose(p.sum(1), 1.0, atol=1e-6)
    order = np.random.default_rng(1).permutation(13)
    names = [ModelConfig().s2_bands[i] for i in order]
    np.testing.assert_array_equal(single.predict(s1[::-1], s2[order], s1_bands=["VH", "VV"], s2_bands=names, s2_offset=1000), p)
    q = multi.predict(s1, s2, s2_offset=1000)
    assert q.shape == (1, 8) and ((q > 0) & (q < 1)).all() and not np.isclose(q.sum(), 1.0)


def test_nodata_mask_gives_nan_exactly_where_data_is_missing(real_pair):
    s1, s2 = real_pair
    s1 = s1.astype(np.float32).copy()
    s1[:, 100:150, 30:80] = np.nan
    seg = tiny_segmenter("resnet18", normalization="fixed")
    probs = seg.predict(s1, s2, s2_offset=1000, nodata="mask")
    hole = np.zeros((224, 224), bool)
    hole[100:150, 30:80] = True
    assert np.isnan(probs[0][:, hole]).all() and np.isfinite(probs[0][:, ~hole]).all()
    with pytest.raises(ValueError, match=r"NaN"):
        seg.predict(s1, s2, s2_offset=1000)
    # a classifier gives NaN for a sample without any valid pixel of a modality it reads
    cls = tiny_classifier("resnet18", normalization="fixed")
    empty = np.full_like(s1, np.nan)
    out = cls.predict(np.stack([s1, empty]), np.stack([s2, s2]), s2_offset=1000, nodata="mask")
    assert np.isfinite(out[0]).all() and np.isnan(out[1]).all()


# ---------------------------------------------------------------------------------------- config
def test_head_config_is_validated_with_clear_messages():
    base = tiny_config("resnet18")
    good = task_config(base, "classification").to_dict()
    with pytest.raises(ConfigError, match=r"head of a classification model has unknown field\(s\) \['decoder'\]"):
        create_model(ModelConfig.from_dict({**good, "head": {**good["head"], "decoder": {}}}))
    with pytest.raises(ConfigError, match=r"head.class_colors must list one \[r, g, b\] per class \(8 classes\)"):
        create_model(ModelConfig.from_dict({**good, "head": {**good["head"], "class_colors": [[0, 0, 0]]}}))
    with pytest.raises(ConfigError, match=r"head.class_colors entry of 'Water' must be \[r, g, b\] with integers 0-255, got \[0, 0, 256\]"):
        task_config(base, "classification", class_colors=[[0, 0, 0]] * 7 + [[0, 0, 256]])
    with pytest.raises(ConfigError, match=r"head.fusion must be one of late, early, s1, s2, got 'middle'"):
        task_config(base, "classification", fusion="middle")
    with pytest.raises(ConfigError, match=r"head.decoder.kind 'swin-unet' does not fit a resnet18 model; use 'unet'"):
        task_config(base, "segmentation", decoder={"kind": "swin-unet"})
    with pytest.raises(ConfigError, match=r"head.decoder.channels must be 3 positive integers"):
        task_config(base, "segmentation", decoder={"channels": [8, 8]})
    with pytest.raises(ConfigError, match=r"config describes a 'backbone' model, not a task model"):
        create_model(base)
    with pytest.raises(ConfigError, match=r"head.class_names has duplicates"):
        task_config(base, "classification", class_names=["a", "a"])


def test_saved_task_model_card_lists_classes_and_shows_load_model(tmp_path):
    folder = tiny_segmenter("resnet18").save_pretrained(tmp_path / "seg")
    card = (folder / "README.md").read_text()
    assert "pipeline_tag: image-segmentation" in card
    assert "| 7 | Water | #1c0dff |" in card and "| 0 | Forest | #009900 |" in card
    assert 'model = load_model("path/or/hf-hub:ORG/REPO")' in card and "load_backbone" not in card


@pytest.mark.parametrize("architecture", ["resnet18", pytest.param("swin-t", marks=pytest.mark.slow)])
def test_forward_exports_to_onnx_and_matches_onnxruntime(architecture, tmp_path):
    """forward(s1, s2) is the export path: raw tensors in, logits out, padding and cropping inside."""
    import warnings

    import onnxruntime as ort

    model = tiny_segmenter(architecture).eval()
    s1 = torch.randn(1, 2, 64, 96) * 4 - 12
    s2 = torch.rand(1, 13, 64, 96) * 3000
    path = tmp_path / "segmenter.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (s1, s2), str(path), input_names=["s1", "s2"], output_names=["logits"], dynamo=False, opset_version=17)
    out = ort.InferenceSession(str(path)).run(None, {"s1": s1.numpy(), "s2": s2.numpy()})[0]
    with torch.no_grad():
        expected = model(s1, s2).numpy()
    assert out.shape == (1, 8, 64, 96)
    np.testing.assert_allclose(out, expected, rtol=1e-4, atol=1e-4)


def test_predict_and_scenes_leave_the_model_where_it_is_and_in_its_mode(tmp_path):
    """predict / predict_scene / embed_scene compute on the caller's model without moving it or leaving it
    in eval mode; another device computes with a copy ("meta" stands in for a GPU: it computes shapes)."""
    from geo_helpers import write_scene

    from s1s2_encoders.geo import SceneInputs, embed_scene, predict_scene
    from s1s2_encoders.models.engine import ModalityBatch

    torch.manual_seed(0)
    segmenter = S1S2Segmenter(task_config(tiny_config("resnet18", "fixed"), "segmentation", decoder={"channels": [16, 8, 8]}))
    segmenter.train()
    pointers = [p.data_ptr() for p in segmenter.parameters()]
    s1, s2 = synthetic_pair((2,), 64, 64)
    segmenter.predict(s1, s2)
    p1, p2 = write_scene(tmp_path, 96, 96)
    predict_scene(segmenter, SceneInputs(s1=[p1], s2=[p2], s2_offset=0), tmp_path / "map.tif", tile=64, overlap=32,
                  progress=False)
    engine = segmenter.inference_engine("float32", device="meta")
    probs = engine.predict_batch({"s1": ModalityBatch(torch.from_numpy(s1)), "s2": ModalityBatch(torch.from_numpy(s2))})
    assert probs.device.type == "meta" and probs.shape == (2, segmenter.num_classes, 64, 64)
    assert segmenter.training and all(m.training for m in segmenter.modules())
    assert [p.data_ptr() for p in segmenter.parameters()] == pointers and all(p.device.type == "cpu" for p in segmenter.parameters())

    backbone = load_backbone(tiny_config("swin-t", "fixed"))
    backbone.train()
    embed_scene(backbone, SceneInputs(s1=[p1], s2=[p2], s2_offset=0), tmp_path / "emb.tif", tile=64, overlap=32,
                progress=False)
    assert backbone.training
