"""Named models: registry name -> architecture, where the weights come from, licence, citation.

An entry never claims a revision or checksum that does not exist. Weights come from one of two places:

* a Hub pin (``repo_id`` + 40-hex ``revision`` + ``sha256`` of ``model.safetensors``): downloaded by
  huggingface_hub and verified (:mod:`s1s2_encoders.hub`);
* otherwise the authors' original checkpoint on Google Drive (``original_file_id``): fetched once,
  converted with :mod:`s1s2_encoders.convert` and cached as a checkpoint folder
  (:mod:`s1s2_encoders.original`). Its size and sha256 go in ``original_size`` / ``original_sha256`` once
  known; until then the first download's values are recorded in the cached folder and printed.

The three published SSLTransformerRS backbones exist only as PyTorch pickles on Google Drive, so today
their entries fetch the original checkpoint.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from .bands import S1_BANDS, S2_L1C_BANDS
from .config import ModelConfig
from .errors import ModelNotFoundError
from .gdrive import view_url as drive_view_url
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
_DRIVE_ID = re.compile(r"^[A-Za-z0-9_-]{10,}$")


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
        original_file_id: Google Drive file id of the authors' original checkpoint.
        original_filename: its file name as the original README gives it (``swin_t.pth``).
        original_size / original_sha256: its size in bytes and sha256, where known (``None``: not
            known yet; the first download records them in the cached folder).
        approx_download_mib: the expected download size in MiB for messages, estimated from the
            architecture's float32 weights (the real size is not published).
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
    original_file_id: str | None = None
    original_filename: str | None = None
    original_size: int | None = None
    original_sha256: str | None = None
    approx_download_mib: int | None = None

    def __post_init__(self) -> None:
        published = (self.repo_id, self.revision, self.sha256)
        if any(v is not None for v in published) and not all(v is not None for v in published):
            raise ValueError(f"registry entry {self.name}: repo_id, revision and sha256 go together")
        if self.revision is not None and not _COMMIT.match(self.revision):
            raise ValueError(f"registry entry {self.name}: revision must be a 40-hex commit, got {self.revision!r}")
        if self.sha256 is not None and not _SHA256.match(self.sha256):
            raise ValueError(f"registry entry {self.name}: sha256 must be 64 hex digits, got {self.sha256!r}")
        if self.original_file_id is not None and not _DRIVE_ID.match(self.original_file_id):
            raise ValueError(f"registry entry {self.name}: {self.original_file_id!r} is not a Google Drive file id")
        if self.original_sha256 is not None and not _SHA256.match(self.original_sha256):
            raise ValueError(f"registry entry {self.name}: original_sha256 must be 64 hex digits")
        if self.original_file_id is None and (self.original_sha256 is not None or self.original_size is not None):
            raise ValueError(f"registry entry {self.name}: original_size / original_sha256 need an original_file_id")

    @property
    def available(self) -> bool:
        """Whether converted weights are on the Hub at a pinned revision."""
        return self.repo_id is not None

    @property
    def weights_source(self) -> str | None:
        """``"hub"`` (a Hub pin), ``"original"`` (the authors' checkpoint, fetched and converted on first
        use) or ``None`` (no pretrained weights)."""
        if self.available:
            return "hub"
        return "original" if self.original_file_id is not None else None

    @property
    def original_weights(self) -> str | None:
        """The Drive page of the original checkpoint (``None`` without one)."""
        return drive_view_url(self.original_file_id) if self.original_file_id is not None else None

    @property
    def status(self) -> str:
        """Where ``load_backbone(name)`` gets the weights, in a few words."""
        if self.available:
            return f"on the Hub: {self.repo_id}@{self.revision[:12]}"  # type: ignore[index]
        if self.original_file_id is not None:
            size = f", ~{self.approx_download_mib} MiB" if self.approx_download_mib else ""
            return f"original checkpoint from Google Drive, converted on first use{size}"
        return "no pretrained weights"

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

    def manual_route(self) -> str:
        """How to get the weights by hand (machines without internet, or when the fetch fails)."""
        if self.original_file_id is None:
            return f"{self.name!r} has no original checkpoint to convert."
        file = self.original_filename or "FILE.pth"
        return (
            f"Manual route: download {file} in a browser from {self.original_weights} (linked from {ORIGINAL_REPO}), "
            f"then run `s1s2 convert {file} --arch {self.architecture} -o {self.name}` and load the folder by path: "
            f"load_backbone('./{self.name}')."
        )

    def how_to_get(self) -> str:
        """Where the pretrained weights come from and how to get them."""
        if self.available:
            return f"load_backbone({self.name!r}) downloads {self.repo_id}@{self.revision} from the Hugging Face Hub."
        if self.original_file_id is not None:
            return (
                f"load_backbone({self.name!r}) downloads the authors' original checkpoint from Google Drive "
                f"({self.original_weights}) once, converts it and caches the result; `s1s2 download {self.name}` "
                f"does this ahead of time.\n{self.manual_route()}"
            )
        return (
            f"{self.name!r} has no published weights. Use load_backbone({self.name!r}, pretrained=False) for "
            "random weights."
        )


_ENTRIES: tuple[RegistryEntry, ...] = (
    RegistryEntry(
        name="swin-s1s2",
        architecture="swin-t",
        description="Dual Swin-T (S1 + S2), contrastive SSL on SEN12MS (Scheibenreif et al., CVPRW 2022)",
        input_size=224,
        license="other",
        license_note=LICENSE_NOTE_ORIGINAL,
        citation=CITATION_CVPRW2022,
        original_file_id="1e7QhC2-zoBFgb65yN1ADWBZLMShHOweY",
        original_filename="swin_t.pth",
        approx_download_mib=220,
    ),
    RegistryEntry(
        name="resnet50-s1s2",
        architecture="resnet50",
        description="Dual ResNet-50 (S1 + S2), Dual-SimCLR on SEN12MS (Scheibenreif et al., ISPRS 2022 / CVPRW 2022)",
        input_size=128,
        license="other",
        license_note=LICENSE_NOTE_ORIGINAL,
        citation=CITATION_ISPRS2022 + "\n\n" + CITATION_CVPRW2022,
        original_file_id="1txqsNLUhIiQXRxflK_SMHn4y7Pp8o3mZ",
        original_filename="resnet50.pth",
        approx_download_mib=215,
    ),
    RegistryEntry(
        name="resnet18-s1s2",
        architecture="resnet18",
        description="Dual ResNet-18 (S1 + S2), Dual-SimCLR on SEN12MS (Scheibenreif et al., ISPRS 2022)",
        input_size=128,
        license="other",
        license_note=LICENSE_NOTE_ORIGINAL,
        citation=CITATION_ISPRS2022,
        original_file_id="1vbj9WVK-MZNuAJGEOGEvE663b9BUwPSh",
        original_filename="resnet18.pth",
        approx_download_mib=90,
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
