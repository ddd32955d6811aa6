"""Land-cover class schemes: names and legend colours of the classes the task models predict.

The papers fine-tune on DFC2020 with 8 classes: the 10-class DFC2020 scheme without Savanna and
Snow/Ice, which are ignored (reference_facts.md §3.3). Class index ``i`` of a model output is
``class_names[i]``; 255 marks ignored / no-data pixels in label maps.

The legend colours are the MODIS IGBP palette colours of the corresponding IGBP classes
(Forest: mixed forest, Shrubland: closed shrublands, Grassland, Wetlands: permanent wetlands,
Croplands, Urban and built-up, Barren, Water bodies), the palette the DFC2020 baseline maps use.
"""

from __future__ import annotations

DFC2020_CLASS_NAMES: tuple[str, ...] = (
    "Forest", "Shrubland", "Grassland", "Wetlands", "Croplands", "Urban/Built-up", "Barren", "Water",
)
"""The 8 classes of the papers' DFC2020 fine-tuning, in model output order."""

DFC2020_CLASS_COLORS: tuple[tuple[int, int, int], ...] = (
    (0, 153, 0),      # Forest          #009900
    (198, 176, 68),   # Shrubland       #c6b044
    (182, 255, 5),    # Grassland       #b6ff05
    (39, 255, 135),   # Wetlands        #27ff87
    (194, 79, 68),    # Croplands       #c24f44
    (165, 165, 165),  # Urban/Built-up  #a5a5a5
    (249, 255, 164),  # Barren          #f9ffa4
    (28, 13, 255),    # Water           #1c0dff
)
"""RGB (0-255) legend colour of each DFC2020 class, same order as :data:`DFC2020_CLASS_NAMES`."""

IGNORE_INDEX = 255
"""Label value of pixels / samples that carry no class (no data, or a class the scheme drops)."""


def default_class_colors(n: int) -> tuple[tuple[int, int, int], ...]:
    """``n`` distinct, deterministic RGB colours for class schemes that bring none.

    Hues are spread with the golden-ratio step so that neighbouring class indices differ clearly.
    """
    import colorsys

    colors = []
    for i in range(n):
        hue = (i * 0.6180339887498949) % 1.0
        lightness = 0.45 if i % 2 == 0 else 0.6
        r, g, b = colorsys.hls_to_rgb(hue, lightness, 0.75)
        colors.append((round(r * 255), round(g * 255), round(b * 255)))
    return tuple(colors)
