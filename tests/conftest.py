"""Shared fixtures: tiny model configs (fast on 2 CPU cores) and the real example pairs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch

from s1s2_encoders import ModelConfig, fixed_clip_scale, load_backbone

REPO = Path(__file__).resolve().parents[1]
EXAMPLES = REPO / "examples" / "data"
TERRAMESH = EXAMPLES / "terramesh"
TERRAMESH_IDS = ("282D_485L_3_3", "38D_378R_2_3", "433D_629L_3_1")

# Tiny towers: same code paths as the real ones (shifted windows, patch merging, bottlenecks),
# a fraction of the compute.
TINY_TOWER_KWARGS = {
    "swin-t": {"embed_dim": 16, "depths": (2, 2, 2, 2), "num_heads": (1, 2, 2, 4)},
    "resnet18": {"layers": (1, 1, 1, 1)},
    "resnet50": {"layers": (1, 1, 1, 1)},
}


@pytest.fixture(scope="session", autouse=True)
def no_drive_and_no_user_cache(tmp_path_factory):
    """No test reaches Google Drive or writes the user's cache: registry names without a Hub pin fetch
    their original checkpoint from ``S1S2_GDRIVE_ENDPOINT`` into ``S1S2_CACHE_DIR``, so both point at
    this session's own places. The endpoint is a loopback port held bound but never listening
    (connections are refused at once); tests that serve checkpoints point it at their own server."""
    import socket

    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("S1S2_GDRIVE_ENDPOINT", f"http://127.0.0.1:{closed.getsockname()[1]}")
        patch.setenv("S1S2_CACHE_DIR", str(tmp_path_factory.mktemp("s1s2-cache")))
        yield
    closed.close()


def tiny_config(architecture: str = "swin-t", normalization: str = "sslt_channel_max", **changes) -> ModelConfig:
    """A small config of the given architecture."""
    config = ModelConfig(architecture=architecture, tower_kwargs=dict(TINY_TOWER_KWARGS[architecture]), name=f"tiny-{architecture}")
    if normalization == "fixed":
        config = config.replace(normalization=fixed_clip_scale())
    return config.replace(**changes) if changes else config


def tiny_model(architecture: str = "swin-t", normalization: str = "sslt_channel_max", seed: int = 0, **changes):
    torch.manual_seed(seed)
    return load_backbone(tiny_config(architecture, normalization, **changes))


def read_tif(path: Path) -> np.ndarray:
    with rasterio.open(path) as src:
        return src.read()


def terramesh_pair(sample: str = TERRAMESH_IDS[0]) -> tuple[np.ndarray, np.ndarray]:
    """(S1 dB float64 (2, 224, 224), S2 L1C int16 (13, 224, 224) with the +1000 offset)."""
    return read_tif(TERRAMESH / "S1RTC" / f"{sample}.tif"), read_tif(TERRAMESH / "S2L1C" / f"{sample}.tif")


@pytest.fixture(scope="session")
def real_pair() -> tuple[np.ndarray, np.ndarray]:
    return terramesh_pair()


@pytest.fixture(scope="session")
def real_batch() -> tuple[np.ndarray, np.ndarray]:
    """All three TerraMesh pairs stacked: S1 (3, 2, 224, 224), S2 (3, 13, 224, 224)."""
    pairs = [terramesh_pair(s) for s in TERRAMESH_IDS]
    return np.stack([p[0] for p in pairs]), np.stack([p[1] for p in pairs])


@pytest.fixture(scope="module", params=["swin-t", "resnet18"])
def any_tiny_model(request):
    return tiny_model(request.param)


def synthetic_pair(shape: tuple[int, ...] = (), h: int = 64, w: int = 64, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Random S1 dB in [-25, -5] and S2 DN in [100, 4000] with a realistic (near-zero) cirrus band B10.

    ``shape`` is the leading batch shape: ``()`` for (C, H, W), ``(B,)`` for (B, C, H, W).
    """
    rng = np.random.default_rng(seed)
    s1 = rng.uniform(-25, -5, size=(*shape, 2, h, w)).astype(np.float32)
    s2 = rng.uniform(100, 4000, size=(*shape, 13, h, w)).astype(np.float32)
    s2[..., 10, :, :] = rng.uniform(5, 30, size=(*shape, h, w))
    return s1, s2


@pytest.fixture(scope="module")
def one_torch_thread():
    """One intra-op thread for a module of many tiny kernels: OpenMP spin-waiting makes them several
    times slower on a shared 2-core machine. Restored afterwards. Use with
    ``pytestmark = pytest.mark.usefixtures("one_torch_thread")``."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
