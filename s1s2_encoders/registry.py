"""Named models: registry name -> architecture, hub repo, pinned revision, sha256, licence, citation.

An entry never claims a revision or checksum that does not exist. The three published
SSLTransformerRS backbones exist only as PyTorch pickles on Google Drive; until a converted copy
is on the Hugging Face Hub their entries carry ``repo_id=None`` and loading them pretrained raises
:class:`~s1s2_encoders.errors.WeightsNotAvailableError` with instructions (download the original
file, convert it with ``s1s2 convert``, load the folder).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from .bands import S1_BANDS, S2_L1C_BANDS
from .config import ModelConfig
from .errors import ModelNotFoundError
from .preprocess import sslt_channel_max

CITATION_CVPRW2022 = """@inproceedings{scheibenreif2022selfsupervised,
  title     = {Self-Supervised Vision Transformers for Land-Cover Segmentation and Classification},
  author    = {Scheibenreif, Linus and Hanna, Jo{\\"e}lle and Mommert, Michael and Borth, Damian},
  booktitle = {Proceedings of the IEEE/CVF Conference on Computer Vision and Pattern Recognition Workshops (CVPRW)},
  pages     = {1422--1431},
  year      = {2022},
  doi       = {10.1109/CVPRW56347.2022.00148}
}"""

CITATION_ISPRS2022 = """@article{scheibenreif2022contrastive,
  title   = {Contrastive Self-Supervised Data Fusion for Satellite Imagery},
  author  = {Scheibenreif, Linus and Mommert, Michael and Borth, Damian},
  journal = {ISPRS Annals of the Photogrammetry, Remote Sensing and Spatial Information Sciences},
  volume  = {V-3-2022},
  pages   = {705--711},
  year    = {2022},
  doi     = {10.5194/isprs-annals-V-3-2022-705-2022}
}"""

ORIGINAL_REPO = "https://github.com/HSG-AIML/SSLTransformerRS"
ORIGINAL_COMMIT = "23ffb689e124f74342ebcec50ad946a582d0f64a"
# Hugging Face metadata for weights derived from the original repository, which has no licence file:
# ``license: other`` needs a name and a link; the link points at the repository at the pinned commit.
LICENSE_NAME_ORIGINAL = "no-license-stated"
LICENSE_LINK_ORIGINAL = f"{ORIGINAL_REPO}/tree/{ORIGINAL_COMMIT}"
LICENSE_NOTE_ORIGINAL = (
    "The original repository (HSG-AIML/SSLTransformerRS) states no licence for its code or weights; "
    "ask the authors before commercial use. Training data: SEN12MS, CC BY 4.0."
)

_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_COMMIT = re.compile(r"^[0-9a-f]{40}$")


@dataclass(frozen=True)
class RegistryEntry:
    """One named model.

    Attributes:
        name: registry name (``load_backbone(name)``).
        architecture: tower architecture (``swin-t``, ``resnet18``, ``resnet50``).
        description: one line for ``s1s2 models``.
        input_size: crop size the weights were trained on.
        license: licence identifier of the weights (Hugging Face metadata spelling).
        license_note: what the licence means in practice.
        citation: BibTeX of the work(s) to cite.
        repo_id / revision / sha256: where the converted weights live on the Hub, the commit they
            are pinned to and the sha256 of ``model.safetensors``; all ``None`` until published.
        original_weights: where the original (unconverted) checkpoint can be downloaded.
    """

    name: str
    architecture: str
    description: str
    input_size: int
    license: str
    license_note: str
    citation: str
    repo_id: str | None = None
    revision: str | None = None
    sha256: str | None = None
    original_weights: str | None = None

    def __post_init__(self) -> None:
        published = (self.repo_id, self.revision, self.sha256)
        if any(v is not None for v in published) and not all(v is not None for v in published):
            raise ValueError(f"registry entry {self.name}: repo_id, revision and sha256 go together")
        if self.revision is not None and not _COMMIT.match(self.revision):
            raise ValueError(f"registry entry {self.name}: revision must be a 40-hex commit, got {self.revision!r}")
        if self.sha256 is not None and not _SHA256.match(self.sha256):
            raise ValueError(f"registry entry {self.name}: sha256 must be 64 hex digits, got {self.sha256!r}")

    @property
    def available(self) -> bool:
        """Whether converted weights are on the Hub at a pinned revision."""
        return self.repo_id is not None

    @property
    def status(self) -> str:
        if self.available:
            return f"on the Hub: {self.repo_id}@{self.revision[:12]}"  # type: ignore[index]
        return "weights not on the Hub yet (convert the original checkpoint)"

    def config(self) -> ModelConfig:
        """The config of this model (what ``pretrained=False`` builds)."""
        return ModelConfig(
            architecture=self.architecture,
            s1_bands=S1_BANDS,
            s2_bands=S2_L1C_BANDS,
            normalization=sslt_channel_max(),
            input_size=self.input_size,
            name=self.name,
            license=self.license,
            citation=self.citation,
            provenance={"source": ORIGINAL_REPO, "source_commit": ORIGINAL_COMMIT},
        )

    def how_to_get(self) -> str:
        """Instructions for obtaining the weights when they are not on the Hub."""
        arch = {"swin-t": "swin-t", "resnet50": "resnet50", "resnet18": "resnet18"}[self.architecture]
        return (
            f"The weights of {self.name!r} are not on the Hugging Face Hub yet. Download the original "
            f"checkpoint from {self.original_weights} (linked from {ORIGINAL_REPO}), convert it with\n"
            f"    s1s2 convert ORIGINAL.pth --arch {arch} -o {self.name}\n"
            f"and load the folder: load_backbone('{self.name}/'). "
            f"Use load_backbone({self.name!r}, pretrained=False) for random weights."
        )


def _drive(file_id: str) -> str:
    return f"https://drive.google.com/file/d/{file_id}/view"


_ENTRIES: tuple[RegistryEntry, ...] = (
    RegistryEntry(
        name="swin-s1s2",
        architecture="swin-t",
        description="Dual Swin-T (S1 + S2), contrastive SSL on SEN12MS (Scheibenreif et al., CVPRW 2022)",
        input_size=224,
        license="other",
        license_note=LICENSE_NOTE_ORIGINAL,
        citation=CITATION_CVPRW2022,
        original_weights=_drive("1e7QhC2-zoBFgb65yN1ADWBZLMShHOweY"),
    ),
    RegistryEntry(
        name="resnet50-s1s2",
        architecture="resnet50",
        description="Dual ResNet-50 (S1 + S2), Dual-SimCLR on SEN12MS (Scheibenreif et al., ISPRS 2022 / CVPRW 2022)",
        input_size=128,
        license="other",
        license_note=LICENSE_NOTE_ORIGINAL,
        citation=CITATION_ISPRS2022 + "\n\n" + CITATION_CVPRW2022,
        original_weights=_drive("1txqsNLUhIiQXRxflK_SMHn4y7Pp8o3mZ"),
    ),
    RegistryEntry(
        name="resnet18-s1s2",
        architecture="resnet18",
        description="Dual ResNet-18 (S1 + S2), Dual-SimCLR on SEN12MS (Scheibenreif et al., ISPRS 2022)",
        input_size=128,
        license="other",
        license_note=LICENSE_NOTE_ORIGINAL,
        citation=CITATION_ISPRS2022,
        original_weights=_drive("1vbj9WVK-MZNuAJGEOGEvE663b9BUwPSh"),
    ),
)

REGISTRY: dict[str, RegistryEntry] = {entry.name: entry for entry in _ENTRIES}


def list_models() -> list[RegistryEntry]:
    """All registry entries, in table order."""
    return list(_ENTRIES)


def get_entry(name: str) -> RegistryEntry:
    """The registry entry called ``name``.

    Raises:
        ModelNotFoundError: listing the known names.
    """
    try:
        return REGISTRY[name]
    except KeyError:
        raise ModelNotFoundError(
            f"unknown model name {name!r}; known names: {', '.join(REGISTRY)} "
            "(or pass a local checkpoint folder, or 'hf-hub:ORG/REPO')"
        ) from None
