"""Embed the bundled real Sentinel-1 / Sentinel-2 pair (TerraMesh sample 282D_485L_3_3).

    python examples/embed_pair.py [--model swin-s1s2] [--sample 282D_485L_3_3]

NOTE: the published weights are not on the Hugging Face Hub yet (see `s1s2 models`), so this
builds the architecture with RANDOM weights (`pretrained=False`). The numbers show the pipeline
working end to end (reading, validation, offset, normalisation, both towers), not a trained model.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import rasterio
import torch

from s1s2_encoders import load_backbone

DATA = Path(__file__).resolve().parent / "data" / "terramesh"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="swin-s1s2")
    parser.add_argument("--sample", default="282D_485L_3_3")
    args = parser.parse_args()

    with rasterio.open(DATA / "S1RTC" / f"{args.sample}.tif") as src:
        s1 = src.read()  # (2, 224, 224) float64, VV/VH in dB
    with rasterio.open(DATA / "S2L1C" / f"{args.sample}.tif") as src:
        s2 = src.read()  # (13, 224, 224) int16, L1C DN with the +1000 baseline-04.00 offset

    torch.manual_seed(0)  # random weights, but the same ones every run
    model = load_backbone(args.model, pretrained=False)
    print(f"model {args.model}: RANDOM weights (pretrained=False), {sum(p.numel() for p in model.parameters()) / 1e6:.1f} M parameters")
    print(f"S1 {s1.shape} {s1.dtype} [{np.nanmin(s1):.1f}, {np.nanmax(s1):.1f}] dB; S2 {s2.shape} {s2.dtype} [{s2.min()}, {s2.max()}] DN")

    embedding = model.embed(s1, s2, s2_offset=1000)  # TerraMesh L1C carries the +1000 offset
    s1_only = model.embed(s1=s1)
    dense = model.embed_dense(s1, s2, s2_offset=1000)
    print(f"embedding {embedding.shape} {embedding.dtype}, finite: {bool(np.isfinite(embedding).all())}, "
          f"L2 norm {np.linalg.norm(embedding):.3f}, first values {' '.join(f'{v:.4f}' for v in embedding[0, :4])}")
    print(f"S1 only {s1_only.shape}; dense pyramid " + ", ".join(f"stride {s}: {tuple(m.shape)}" for s, m in dense.items()))


if __name__ == "__main__":
    main()
