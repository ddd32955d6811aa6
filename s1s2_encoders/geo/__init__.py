"""Whole scenes: GeoTIFF pairs in, georeferenced embeddings and land-cover maps out, streamed.

* :mod:`.grid` - pixel grids and the same-grid check;
* :mod:`.sources` - reading one modality from a multi-band file or per-band files (10/20/60 m);
* :mod:`.scene` - a scene's S1 + S2 sources on one grid, the S2 offset, first-batch checks;
* :mod:`.tiling` / :mod:`.blend` - tile layout and smooth blending of overlaps;
* :mod:`.stream` - the read -> infer -> blend -> write loop with reader and writer threads;
* :mod:`.writers` - tiled, compressed GeoTIFF / npy outputs under temporary names;
* :mod:`.embed` / :mod:`.predict` - the two products; :mod:`.preview` - a PNG quick-look;
* :mod:`.scenes` - lists of scenes, skipping finished ones, sharding across processes.
"""

from .embed import SceneResult, embed_scene
from .grid import Grid, check_same_grid
from .predict import predict_scene
from .scene import SceneInputs, open_scene
from .sources import open_modality
from .tiling import TilePlan

__all__ = ["Grid", "SceneInputs", "SceneResult", "TilePlan", "check_same_grid", "embed_scene", "open_modality", "open_scene",
           "predict_scene"]
