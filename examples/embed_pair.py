"""Embed a bundled real Sentinel-1 / Sentinel-2 pair (TerraMesh sample 282D_485L_3_3).

    python examples/embed_pair.py --model runs/tiny/export      # a checkpoint folder (e.g. the quickstart's)
    python examples/embed_pair.py --model swin-s1s2             # a registry name

A checkpoint folder is loaded with its trained weights (strictly). A registry name loads its pretrained
weights (the authors' original checkpoint is downloaded from Google Drive and converted on first use, see
`s1s2 models`); with --random it is built with RANDOM weights (`pretrained=False`, no network): the numbers
then show the pipeline working end to end (reading, validation, offset, normalisation, both towers), not a
trained model.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import rasterio
import torch

from s1s2_encoders import get_entry, load_backbone

DATA = Path(__file__).resolve().parent / "data" / "terramesh"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="swin-s1s2", help="checkpoint folder or registry name")
    parser.add_argument("--sample", default="282D_485L_3_3", help="TerraMesh sample id in examples/data/terramesh")
    parser.add_argument("--random", action="store_true", help="registry names: random weights, no download")
    args = parser.parse_args()

    with rasterio.open(DATA / "S1RTC" / f"{args.sample}.tif") as src:
        s1 = src.read()  # (2, 224, 224) float64, VV/VH in dB
    with rasterio.open(DATA / "S2L1C" / f"{args.sample}.tif") as src:
        s2 = src.read()  # (13, 224, 224) int16, L1C DN with the +1000 baseline-04.00 offset

    if Path(args.model).is_dir():
        model = load_backbone(args.model)
        prov = model.config.provenance
        origin = (f"TRAINED weights from {args.model} (recipe {prov.get('recipe')}, {prov.get('objective')}, "
                  f"{prov.get('steps')} steps, normalisation {model.config.normalization.kind})")
    else:
        entry = get_entry(args.model)
        if entry.weights_source is not None and not args.random:
            model = load_backbone(args.model)
            origin = f"published weights ({model.config.provenance.get('loaded_from')})"
        else:
            torch.manual_seed(0)  # random weights, but the same ones every run
            model = load_backbone(args.model, pretrained=False)
            origin = "RANDOM weights (pretrained=False)"
    n_params = sum(p.numel() for p in model.parameters())
    print(f"model {model.config.name or args.model} ({model.config.architecture}, {n_params / 1e6:.2f} M parameters): {origin}")
    print(f"sample {args.sample}: S1 {s1.shape} {s1.dtype} [{np.nanmin(s1):.1f}, {np.nanmax(s1):.1f}] dB; "
          f"S2 {s2.shape} {s2.dtype} [{s2.min()}, {s2.max()}] DN")

    embedding = model.embed(s1, s2, s2_offset=1000)  # TerraMesh L1C carries the +1000 offset
    parts = model.embed(s1, s2, s2_offset=1000, per_modality=True)
    dense = model.embed_dense(s1, s2, s2_offset=1000)
    print(f"embedding {embedding.shape} {embedding.dtype}, finite: {bool(np.isfinite(embedding).all())}, "
          f"L2 norm {np.linalg.norm(embedding):.3f}, first values {' '.join(f'{v:.4f}' for v in embedding[0, :4])}")
    print(f"per modality: S1 {parts['s1'].shape}, S2 {parts['s2'].shape}; dense pyramid "
          + ", ".join(f"stride {s}: {tuple(m.shape)}" for s, m in dense.items()))


if __name__ == "__main__":
    main()
