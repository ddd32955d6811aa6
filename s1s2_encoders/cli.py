"""The ``s1s2`` command.

Each subcommand is a pair of functions: ``_add_<name>(subparsers)`` declares its arguments and
``_run_<name>(args)`` does the work and returns an exit code. Errors of this package
(:class:`~s1s2_encoders.errors.S1S2Error`) are printed as one clear line and exit with status 2;
anything else is a bug and shows its traceback.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
from pathlib import Path
from typing import Callable, Sequence

from . import __version__
from .errors import S1S2Error


def _weights_line(entry) -> str:
    """Where ``load_backbone(entry.name)`` gets its weights, for people."""
    if entry.weights_source == "hub":
        return f"Hugging Face Hub, {entry.repo_id} @ {entry.revision} (sha256 of model.safetensors {entry.sha256})"
    if entry.weights_source == "original":
        size = f" (~{entry.approx_download_mib} MiB, once)" if entry.approx_download_mib else ""
        file = f" {entry.original_filename}" if entry.original_filename else ""
        return (f"the authors' original checkpoint{file} from Google Drive, {entry.original_weights}{size}, "
                "converted on first use")
    return "none published (pretrained=False builds random weights)"


def _cache_state(entry, cache_dir=None) -> tuple[bool, str | None]:
    """``(cached, folder)`` without hashing anything (a listing must be cheap)."""
    if entry.weights_source == "original":
        from .original import read_cached

        cached = read_cached(entry.name, cache_dir)
        return (cached is not None, str(cached.folder) if cached else None)
    if entry.weights_source == "hub":
        from huggingface_hub import try_to_load_from_cache

        from .config import WEIGHTS_FILENAME

        found = try_to_load_from_cache(entry.repo_id, WEIGHTS_FILENAME, cache_dir=cache_dir, revision=entry.revision)
        return (isinstance(found, str), str(Path(found).parent) if isinstance(found, str) else None)
    return False, None


def _add_models(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("models", help="list the registry's models, where their weights come from and whether they are cached")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.add_argument("--cache-dir", default=None, help="cache folder to look in (default: S1S2_CACHE_DIR / HF_HOME)")
    p.set_defaults(run=_run_models)


def _run_models(args: argparse.Namespace) -> int:
    from .original import cache_root
    from .registry import list_models

    entries = list_models()
    states = {e.name: _cache_state(e, args.cache_dir) for e in entries}
    if args.json:
        rows = [
            {
                "name": e.name, "architecture": e.architecture, "weights_source": e.weights_source,
                "available": e.available, "status": e.status, "repo_id": e.repo_id, "revision": e.revision,
                "sha256": e.sha256, "original_weights": e.original_weights, "original_sha256": e.original_sha256,
                "cached": states[e.name][0], "cache_folder": states[e.name][1], "license": e.license,
                "input_size": e.input_size, "description": e.description,
            }
            for e in entries
        ]
        print(json.dumps(rows, indent=2))
        return 0
    width = max(len(e.name) for e in entries)
    status_width = max(len(e.status) for e in entries)
    print(f"{'name':<{width}}  {'architecture':<12}  {'weights':<{status_width}}  cached")
    for e in entries:
        print(f"{e.name:<{width}}  {e.architecture:<12}  {e.status:<{status_width}}  {'yes' if states[e.name][0] else 'no'}")
    print(f"\nload_backbone(NAME) fetches what is not cached; `s1s2 download NAME` does it ahead of time (cache: "
          f"{cache_root(args.cache_dir)}; `s1s2 cache remove NAME` deletes a copy). `s1s2 info NAME` for details; "
          "load_backbone(NAME, pretrained=False) builds random weights.")
    return 0


def _add_info(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("info", help="show a registry entry or a checkpoint folder: weights, bands, units, normalisation, licence")
    p.add_argument("model", help="registry name or checkpoint folder")
    p.add_argument("--cache-dir", default=None, help="cache folder to look in (default: S1S2_CACHE_DIR / HF_HOME)")
    p.set_defaults(run=_run_info)


def _run_info(args: argparse.Namespace) -> int:

    from .checkpoint import read_config
    from .registry import REGISTRY

    if args.model in REGISTRY:
        entry = REGISTRY[args.model]
        config = entry.config()
        cached, folder = _cache_state(entry, args.cache_dir)
        print(f"name:          {entry.name}")
        print(f"description:   {entry.description}")
        print(f"weights:       {_weights_line(entry)}")
        if entry.weights_source == "original":
            from .original import read_cached

            record = read_cached(entry.name, args.cache_dir)
            known = (f"{entry.original_size:,} bytes, sha256 {entry.original_sha256}" if entry.original_sha256
                     else "size and sha256 not in the registry yet")
            print(f"original file: {known}")
            if record is not None:
                print(f"cached:        yes, {record.folder}")
                print(f"               converted from {record.filename}: {record.size:,} bytes, sha256 {record.sha256}, "
                      f"downloaded {record.downloaded_at}")
            else:
                print(f"cached:        no (`s1s2 download {entry.name}` fetches and converts it)")
        else:
            print(f"cached:        {'yes, ' + str(folder) if cached else 'no'}")
        print(f"license:       {entry.license} - {entry.license_note}")
    elif Path(args.model).is_dir():
        config = read_config(args.model)
        print(f"folder:        {args.model}")
        print(f"name:          {config.name}")
        print(f"license:       {config.license}")
    else:
        from .registry import get_entry

        get_entry(args.model)  # raises ModelNotFoundError listing the names
        return 2
    print(f"architecture:  {config.architecture} (timm {config.timm_name}) x 2 towers, task {config.task}")
    print(f"s1 bands:      {', '.join(config.s1_bands)}  [{config.input_units['s1']}]")
    print(f"s2 bands:      {', '.join(config.s2_bands)}  [{config.input_units['s2']}]")
    print(f"normalisation: {json.dumps(config.normalization.to_dict())}")
    print(f"trained crops: {config.input_size} x {config.input_size} px")
    if config.citation:
        print("citation:")
        print(config.citation)
    if args.model in REGISTRY:
        print()
        print(REGISTRY[args.model].how_to_get())
    return 0


def _add_download(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "download",
        help="fetch a model into the cache ahead of time (for later offline use)",
        description="Fetch a model so that later loads need no network: a registry name's Hub pin, or its original "
        "checkpoint from Google Drive (converted once); or an hf-hub:ORG/REPO[@REV] repository. Prints where it came "
        "from, its size and sha256, and the cached folder.",
    )
    p.add_argument("model", help="registry name or hf-hub:ORG/REPO[@REV]")
    p.add_argument("--revision", default=None, help="Hub revision (hf-hub: repositories and Hub-pinned names)")
    p.add_argument("--cache-dir", default=None, help="cache folder (default: S1S2_CACHE_DIR / HF_HOME)")
    p.add_argument("--expected-sha256", default=None, metavar="HEX",
                   help="refuse the download unless it has this sha256 (the original .pth file for names fetched from "
                   "Google Drive; model.safetensors for Hub repositories)")
    p.add_argument("--force", action="store_true", help="download and convert again even if cached")
    p.add_argument("--verify", action="store_true",
                   help="re-check a cached copy: model.safetensors against its recorded sha256, and (for original "
                   "checkpoints) the file on Google Drive, downloaded again, against the size and sha256 recorded at the "
                   "first download")
    p.set_defaults(run=_run_download)


def _run_download(args: argparse.Namespace) -> int:
    from .hub import resolve_model
    from .registry import REGISTRY

    entry = REGISTRY.get(args.model)
    if entry is not None and entry.weights_source == "original":
        return _download_original(entry, args)
    source = resolve_model(args.model, revision=args.revision, cache_dir=args.cache_dir,
                           force_download=args.force, expected_sha256=args.expected_sha256)
    print(f"{args.model}: {source.repo_id} @ {source.revision} from the Hugging Face Hub")
    print(f"  sha256: {source.sha256} (model.safetensors{', verified' if args.verify else ''})")
    print(f"  folder: {source.folder}")
    return 0


def _download_original(entry, args: argparse.Namespace) -> int:
    from .errors import ChecksumError
    from .original import read_cached, resolve_original, verify_original

    if args.revision is not None:
        from .errors import ModelNotFoundError

        raise ModelNotFoundError(f"{entry.name} has no Hub revision (--revision): its weights are the original checkpoint")
    before = read_cached(entry.name, args.cache_dir)
    source = resolve_original(entry, cache_dir=args.cache_dir, force_download=args.force,
                              expected_sha256=args.expected_sha256)
    record = read_cached(entry.name, args.cache_dir)
    if record is None:  # only if another process removed it right after it was written
        raise ChecksumError(f"{entry.name}: {source.folder} disappeared right after it was written; run again")
    fetched = args.force or before is None or before.downloaded_at != record.downloaded_at
    print(f"{entry.name}: the authors' original checkpoint {record.filename}, {'downloaded now' if fetched else 'cached'}")
    print(f"  source:  {record.source_url}")
    print(f"  url:     {record.download_url}")
    print(f"  bytes:   {record.size:,}")
    print(f"  sha256:  {record.sha256}{'' if entry.original_sha256 else ' (not in the registry; pin it with --expected-sha256 / expected_sha256=)'}")
    print(f"  folder:  {source.folder}")
    print(f"  model.safetensors sha256: {record.weights_sha256} (checked at every load)")
    if args.verify and fetched:
        print("  verified: downloaded and checked just now")
    elif args.verify:
        check = verify_original(entry, args.cache_dir)
        if not check.matches:
            raise ChecksumError(
                f"{entry.name}: the file on Google Drive now has {check.size:,} bytes and sha256 {check.sha256}, but the "
                f"cached copy was converted from {record.size:,} bytes with sha256 {record.sha256}. The file changed on "
                f"Drive (or one of the downloads is bad); the cache was left as it is. `s1s2 download {entry.name} --force` "
                "replaces it with the current file."
            )
        print(f"  verified: model.safetensors matches its recorded sha256, and the file on Drive still has "
              f"{check.size:,} bytes and sha256 {check.sha256}")
    return 0


def _add_cache(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "cache",
        help="list or remove the converted original checkpoints in the cache",
        description="Converted original checkpoints live in S1S2_CACHE_DIR, else $HF_HOME/s1s2-encoders (one folder "
        "original--NAME each). Weights from the Hugging Face Hub live in huggingface_hub's cache: remove those with "
        "`hf cache rm model/ORG/REPO`.",
    )
    p.add_argument("action", choices=("list", "remove"), help="list the cached models, or remove some")
    p.add_argument("names", nargs="*", metavar="NAME", help="registry names to remove")
    p.add_argument("--all", action="store_true", help="with remove: every cached model")
    p.add_argument("--cache-dir", default=None, help="cache folder (default: S1S2_CACHE_DIR / HF_HOME)")
    p.set_defaults(run=_run_cache)


def _run_cache(args: argparse.Namespace) -> int:
    from .errors import OptionError
    from .original import cache_root, read_cached, remove_cached
    from .registry import REGISTRY, get_entry

    root = cache_root(args.cache_dir)
    if args.action == "list":
        if args.names or args.all:
            raise OptionError("`s1s2 cache list` takes no names and no --all")
        found = [r for r in (read_cached(name, args.cache_dir) for name in REGISTRY) if r is not None]
        print(f"cache: {root}")
        for record in found:
            size = sum(f.stat().st_size for f in record.folder.iterdir() if f.is_file())
            print(f"  {record.name:<16} {size / 2**20:8.1f} MiB  {record.folder}  (from {record.filename}, sha256 "
                  f"{record.sha256[:16]}..., {record.downloaded_at})")
        if not found:
            print("  (no converted original checkpoints)")
        return 0
    if args.all == bool(args.names):
        raise OptionError("`s1s2 cache remove` takes registry names or --all (not both)")
    names = list(REGISTRY) if args.all else args.names
    for name in names:
        entry = get_entry(name)  # unknown names: an error listing the known ones
        removed = remove_cached(name, args.cache_dir)
        if removed is not None:
            print(f"removed {removed}")
        elif entry.weights_source == "hub":
            print(f"{name}: its weights are in huggingface_hub's cache; remove them with `hf cache rm model/{entry.repo_id}`")
        elif not args.all:
            print(f"{name}: not cached in {root}")
    return 0


def _add_convert(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "convert",
        help="convert an original SSLTransformerRS .pth checkpoint into a checkpoint folder",
        description="Convert an original SSLTransformerRS checkpoint (swin_t.pth, resnet50.pth, resnet18.pth "
        "from the Google Drive links of HSG-AIML/SSLTransformerRS) into a folder that load_backbone() loads: "
        "config.json, model.safetensors, README.md. The file is read with torch.load(weights_only=True).",
    )
    p.add_argument("checkpoint", help="the original .pth file")
    p.add_argument("--arch", choices=("swin-t", "resnet50", "resnet18"), default=None,
                   help="architecture of the checkpoint (default: inferred from its keys)")
    p.add_argument("-o", "--output", default=None, help="folder to write (default: the registry name next to the file)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output folder")
    p.set_defaults(run=_run_convert)


def _run_convert(args: argparse.Namespace) -> int:
    from .convert import convert_sslt_checkpoint

    report = convert_sslt_checkpoint(args.checkpoint, arch=args.arch, output=args.output, overwrite=args.overwrite)
    print(report.summary())
    return 0


def _add_push(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "push",
        help="upload a checkpoint folder to the Hugging Face Hub and print its registry pin",
        description="Upload config.json, model.safetensors and README.md of a checkpoint folder to a Hub model "
        "repository (created if needed), after checking that the weights load strictly and the model card "
        "parses. Prints the repo id, commit and sha256 to pin in s1s2_encoders/registry.py. Uses HF_ENDPOINT "
        "and HF_TOKEN (or the token of `hf auth login`).",
    )
    p.add_argument("folder", help="checkpoint folder (e.g. written by `s1s2 convert`)")
    p.add_argument("--repo-id", required=True, help="Hub repository, ORG/NAME")
    p.add_argument("--private", action="store_true", help="create the repository as private")
    p.add_argument("--branch", default=None, help="branch to commit to (default: main)")
    p.add_argument("--message", default=None, help="commit message")
    p.add_argument("--token", default=None, help="Hub token with write access (default: HF_TOKEN / saved login)")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(run=_run_push)


def _run_push(args: argparse.Namespace) -> int:
    from .publish import push_to_hub

    result = push_to_hub(
        args.folder, args.repo_id, token=args.token, private=args.private, commit_message=args.message,
        branch=args.branch,
    )
    if args.json:
        print(json.dumps({"name": result.name, "repo_id": result.repo_id, "revision": result.commit,
                          "sha256": result.sha256, "url": result.url}, indent=2))
        return 0
    print(f"pushed {args.folder} to {result.repo_id} at commit {result.commit}")
    if result.url:
        print(f"  {result.url}")
    print(f"  model.safetensors sha256 {result.sha256}")
    target = f"the RegistryEntry {result.name!r}" if result.name else "its RegistryEntry"
    print(f"\nTo publish it under its name, set in {target} (s1s2_encoders/registry.py):")
    for line in result.registry_fields().splitlines():
        print(f"    {line}")


def _add_export(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "export",
        help="export the embedder (normalisation included) to ONNX or a torch.export program",
        description=(
            "Export the pooled embedder of a checkpoint: raw S1 dB / S2 L1C DN (offset removed) in, (B, D) "
            "embedding out, dynamic batch, height and width (>= 33 px). The file is checked against PyTorch "
            "after writing and the largest difference is printed."
        ),
    )
    p.add_argument("model", help="checkpoint folder (or registry name / hf-hub:ORG/REPO)")
    p.add_argument("--format", required=True, choices=["onnx", "torch-export"], help="onnx (.onnx) or torch-export (.pt2)")
    p.add_argument("-o", "--output", required=True, help="file to write (.onnx / .pt2)")
    p.add_argument("--modality", default="both", choices=["both", "s1", "s2"], help="fused S1+S2 (default) or one tower")
    p.add_argument("--opset", type=int, default=None, help="ONNX opset (default: the exporter's)")
    p.add_argument("--overwrite", action="store_true", help="replace OUTPUT if it exists")
    p.add_argument("--no-check", action="store_true", help="do not run the written file against PyTorch")
    p.set_defaults(run=_run_export)


def _run_export(args: argparse.Namespace) -> int:
    from .export import export_embedder
    from .models import load_backbone

    model = load_backbone(args.model)
    try:
        result = export_embedder(
            model, args.output, format=args.format, modality=args.modality,
            opset=args.opset, overwrite=args.overwrite, check=not args.no_check,
        )
    except (FileExistsError, ValueError) as exc:
        print(f"s1s2 export: error: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {result.path} ({args.format}): inputs {', '.join(result.inputs)}, batch dynamic, dynamic H x W (>= 33), "
          f"output embedding (B, {result.embed_dim})")
    if result.max_abs_diff is not None:
        shapes = ", ".join(f"{b}x{h}x{w}" for b, h, w in result.checked_shapes)
        print(f"max |exported - PyTorch| = {result.max_abs_diff:.3g} (float32; B x H x W = {shapes})")
    elif not args.no_check:
        print("not checked: onnxruntime is not installed")
    return 0


# --------------------------------------------------------------------------- whole scenes (geo)
def _csv(text: str) -> list[str]:
    return [t for t in (part.strip() for part in text.split(",")) if t]


def _offset(text: str) -> float | None:
    if text.lower() == "auto":
        return None
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--s2-offset takes 'auto' or a number, got {text!r}") from None


def _add_scene_options(p: argparse.ArgumentParser) -> None:
    """Input, tiling and run options shared by ``embed`` and ``predict``."""
    inputs = p.add_argument_group("inputs (one scene: --s1/--s2 FILES -o FILE; many: --scenes LIST or glob patterns, -o FOLDER)")
    inputs.add_argument("--s1", nargs="+", metavar="PATH",
                        help="Sentinel-1 GeoTIFF (VV, VH in dB), or per-band files / a folder of them, or a STAC item (JSON file or URL; Planetary Computer sentinel-1-rtc linear power is converted to dB); with -o FOLDER a quoted glob pattern")
    inputs.add_argument("--s2", nargs="+", metavar="PATH",
                        help="Sentinel-2 GeoTIFF with all bands, or per-band files at 10/20/60 m (resampled to the 10 m grid) / a folder of them (BigEarthNet, SAFE IMG_DATA), or a STAC item (JSON file or URL; Planetary Computer B01..B12 or Earth Search common-name assets; offset from the item)")
    inputs.add_argument("--scenes", metavar="LIST", help="text file, one scene per line: S1 S2 [OUTPUT] ('-' for a missing modality)")
    inputs.add_argument("--s1-bands", type=_csv, metavar="NAMES", help="band names of the S1 input in order, comma-separated ('-' for unused bands); default: band descriptions, else VV,VH")
    inputs.add_argument("--s2-bands", type=_csv, metavar="NAMES", help="band names of the S2 input in order (e.g. the 12 L2A bands), '-' for unused bands; default: band descriptions / file names, else model order")
    inputs.add_argument("--s1-linear", action="store_true", help="S1 holds linear power: convert to dB (10 log10)")
    inputs.add_argument("--s2-offset", type=_offset, default=None, metavar="auto|DN",
                        help="digital numbers to subtract from S2 (1000 for processing baseline >= 04.00, i.e. from 25 Jan 2022); auto (default): from the product metadata (file tags, a STAC item's s2:processing_baseline / earthsearch:boa_offset_applied) when present, else 0 with a warning if the values look offset")
    inputs.add_argument("--align", action="store_true", help="warp S1 onto the S2 grid when their CRS/transform/size differ (default: refuse)")
    inputs.add_argument("--resampling", default="bilinear", choices=("nearest", "bilinear", "cubic", "average"),
                        help="resampling for 20/60 m bands and --align (default bilinear)")
    p.add_argument("-o", "--output", required=True, help="output file (one scene) or existing folder (many scenes)")
    p.add_argument("--model", default="swin-s1s2", help="registry name, checkpoint folder or hf-hub:ORG/REPO (default swin-s1s2)")
    run = p.add_argument_group("tiling and inference")
    run.add_argument("--tile", type=int, default=None, help="tile size in pixels: a multiple of 32 for dense maps (default 448); with --pooled / classification models, the cell size (default: the model's training crop size)")
    run.add_argument("--overlap", type=int, default=64, help="overlap between tiles in pixels, a multiple of 32, blended with smooth weights (default 64)")
    run.add_argument("--batch-size", type=int, default=None, help="tiles per forward pass (default 8 on CPU; 32 at 448 px on a GPU with >= 16 GB)")
    run.add_argument("--readers", type=int, default=None, metavar="N",
                     help="reader threads that read, decode and mask tiles in parallel; the output is the same for every N (default: 1 on CPU, the cores minus one, at most 8, on a GPU)")
    run.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda:LOCAL_RANK under torchrun with GPUs, else cuda if available, else cpu)")
    run.add_argument("--dtype", default="auto", choices=("auto", "float32", "bfloat16", "float16"), help="compute precision: auto (default) = bfloat16 where the CPU/GPU runs it natively (agrees with float32 to cosine >= 0.999), else float32; float32 is the reference")
    run.add_argument("--compress", default="deflate", choices=("deflate", "zstd", "lzw", "none"), help="GeoTIFF compression (default deflate)")
    run.add_argument("--no-cog", dest="cog", action="store_false",
                     help="GeoTIFF outputs: keep the streamed tiled file instead of laying it out as a Cloud-Optimized GeoTIFF with overviews at the end")
    run.add_argument("--overwrite", action="store_true", help="replace existing outputs (default: refuse; with many scenes, skip complete ones, replace this package's unfinished ones and refuse any other file)")
    run.add_argument("--resume", action="store_true", help="continue an interrupted run from its partial output (same parameters); keeps partial output when interrupted")
    run.add_argument("--checkpoint-every", type=float, default=60.0, metavar="SECONDS", help="with --resume: how often the partial output is made resumable (default 60)")
    run.add_argument("--no-check-units", dest="check_units", action="store_false", help="do not check for S2 reflectance in 0-1 / S1 in linear power")
    run.add_argument("--quiet", action="store_true", help="no progress line")
    run.add_argument("--no-stac", dest="stac", action="store_false",
                     help="do not write NAME.json, the STAC Item sidecar of each output (default: written when pystac is installed)")


def _scene_inputs(args: argparse.Namespace, job):  # -> geo.SceneInputs
    from .geo.scene import SceneInputs

    return SceneInputs(
        s1=list(job.s1) if job.s1 else None, s2=list(job.s2) if job.s2 else None,
        s1_bands=args.s1_bands, s2_bands=args.s2_bands, s1_linear=args.s1_linear, s2_offset=args.s2_offset,
        align=args.align, resampling=args.resampling,
    )


def _limit_gdal_cache(readers: int | None = None) -> None:
    # GDAL sizes its block cache once, from this variable, the first time it needs it. A fixed cache
    # keeps memory independent of the scene's size; it must hold the block strips across the
    # scene's width that the next tile row reads again (see geo.feed.gdal_cache_mib: 512 MiB, more
    # with more readers).
    from .geo.feed import check_readers, gdal_cache_mib

    check_readers(readers)  # before any scene: a bad --readers fails once, not once per scene
    os.environ.setdefault("GDAL_CACHEMAX", str(gdal_cache_mib(readers)))


@contextlib.contextmanager
def _plain_warnings(command: str, prefix: str = ""):
    """Show warnings as one ``s1s2 CMD: warning: ...`` line each, not with a source line."""
    import warnings

    def show(message, category, filename, lineno, file=None, line=None):
        print(f"{prefix}s1s2 {command}: warning: {message}", file=sys.stderr, flush=True)

    with warnings.catch_warnings():
        warnings.showwarning = show
        yield


@contextlib.contextmanager
def _terminate_as_interrupt():
    """Treat SIGTERM (batch schedulers, torchrun stopping the other ranks) like Ctrl-C, so partial
    outputs are cleaned up, or kept for --resume, instead of being cut off mid-write."""
    import signal

    def handler(signum, frame):
        raise KeyboardInterrupt(f"signal {signum}")

    try:
        previous = signal.signal(signal.SIGTERM, handler)
    except ValueError:  # not the main thread (s1s2 called from a worker thread): leave it alone
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _run_scenes(args: argparse.Namespace, suffix: str, load: Callable, work: Callable, is_complete: Callable,
                outputs: Callable) -> int:
    from .geo.runner import build_jobs, default_device, distributed, run_jobs
    from .geo.scenes import Shard

    jobs, multi = build_jobs(args.s1, args.s2, args.scenes, args.output, suffix)
    shard = Shard.from_env()
    device = default_device(shard, args.device)
    with _terminate_as_interrupt(), _plain_warnings(args.command, f"[{shard.label}] " if shard.label else ""), \
            distributed(shard, device) as gather:
        model = load(args.model, device)
        summary = run_jobs(jobs, lambda job, label: work(model, job, label, device), shard=shard, multi=multi,
                           is_complete=is_complete, overwrite=args.overwrite, outputs=outputs)
        everyone = gather(summary)
    if multi and shard.rank == 0:
        written = sum(len(s.written) for s in everyone)
        skipped = sum(len(s.skipped) for s in everyone)
        failed = sum(len(s.failed) for s in everyone)
        print(f"{len(jobs)} scene(s): {written} written, {skipped} skipped (complete), {failed} failed"
              + (f", {shard.world} processes" if shard.world > 1 else ""))
    return summary.exit_code


def _writer_tags() -> dict[str, str]:
    """Which process wrote an output (for torchrun jobs)."""
    from .geo.scenes import Shard

    shard = Shard.from_env()
    return {"S1S2_WRITER": f"rank {shard.rank} of {shard.world}"}


def _add_embed(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "embed", help="embed whole S1/S2 GeoTIFF scenes into a georeferenced embedding GeoTIFF (streamed)",
        description="Embed whole scenes tile by tile with bounded memory. Output: float32 (or --quantize int8) "
        "Cloud-Optimized GeoTIFF with overviews (--no-cog: the plain tiled file), one band per "
        "feature (S1 features then S2), NaN where there was no data, CRS of the input and its transform scaled to "
        "the output cell.",
    )
    _add_scene_options(p)
    out = p.add_argument_group("embedding output")
    out.add_argument("--modality", default="both", choices=("both", "s1", "s2"), help="towers to run (default both)")
    out.add_argument("--stride", type=int, default=32, choices=(4, 8, 16, 32), help="input pixels per output cell of the dense map (pyramid level; default 32)")
    out.add_argument("--pooled", action="store_true", help="one pooled vector per non-overlapping --tile x --tile cell instead of a dense map")
    out.add_argument("--format", dest="fmt", default="tif", choices=("tif", "npy", "geoparquet"),
                     help="tif (GeoTIFF), npy ((H, W, C) float32 + NAME.npy.json with CRS and transform) or, with --pooled, "
                     "geoparquet (one row per chip: footprint in EPSG:4326, window, embedding, valid fraction; the 'geoparquet' extra)")
    out.add_argument("--quantize", default="none", choices=("none", "int8"),
                     help="int8: each modality part of every vector scaled to unit length, stored as round(127 x), -128 = nodata; the rule and scale 1/127 are written into the file (default none: float32)")
    p.set_defaults(run=_run_embed)


def _run_embed(args: argparse.Namespace) -> int:
    _limit_gdal_cache(args.readers)
    from .geo.embed import embed_scene
    from .geo.runner import is_multi_scene
    from .geo.writers import is_complete_geotiff, is_own_output, npy_sidecar_path, refuse_foreign_outputs
    from .models import load_backbone

    from .errors import OptionError
    from .geo.stac_item import is_own_item, stac_available, stac_item_path

    if args.fmt == "geoparquet" and not args.pooled:
        raise OptionError("--format geoparquet writes one row per chip: add --pooled (chip size: --tile)")
    if args.fmt == "geoparquet" and args.resume:
        raise OptionError("--resume does not apply to --format geoparquet (each scene's chips are written at its end); "
                          "run without it: complete scenes are skipped anyway")
    suffix = {"npy": ".npy", "geoparquet": ".parquet"}.get(args.fmt, ".tif")
    stac = args.stac and stac_available()
    # With many scenes, work() only sees scenes that are not complete and whose existing outputs the
    # package wrote itself (run_jobs refuses others' files): those leftovers are replaced.
    multi = is_multi_scene(args.output, args.scenes)

    def load(name: str, device: str):
        return load_backbone(name, device=device)

    def outputs(job) -> list[Path]:
        return ([job.output] + ([npy_sidecar_path(job.output)] if args.fmt == "npy" else [])
                + ([stac_item_path(job.output)] if stac else []))

    def work(model, job, label: str, device: str):
        if not multi and not args.overwrite:
            # embed_scene refuses an existing -o file; the .npy sidecar beside it is checked here.
            refuse_foreign_outputs(outputs(job)[1:])
        tile = args.tile or (model.config.input_size if args.pooled else 448)
        return embed_scene(
            model, _scene_inputs(args, job), job.output, modality=args.modality, stride=args.stride,
            pooled=args.pooled, tile=tile, overlap=args.overlap, batch_size=args.batch_size, device=device,
            dtype=args.dtype, fmt=args.fmt, compress=args.compress, overwrite=args.overwrite or multi, resume=args.resume,
            check_units=args.check_units, progress=not args.quiet, label=label, extra_tags=_writer_tags(),
            checkpoint_every=args.checkpoint_every, cog=args.cog, quantize=args.quantize, stac=args.stac, readers=args.readers,
        )

    def is_complete(job) -> bool:
        # The STAC Item is written right after the output is committed: a scene without it is redone.
        if stac and not is_own_item(stac_item_path(job.output)):
            return False
        if args.fmt == "npy":  # the sidecar is written just before the array is renamed into place
            return job.output.is_file() and is_own_output(npy_sidecar_path(job.output))
        if args.fmt == "geoparquet":  # written whole at the end, so a parquet of ours is complete
            return is_own_output(job.output)
        return is_complete_geotiff(job.output)

    return _run_scenes(args, suffix, load, work, is_complete, outputs)


def _add_predict(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "predict", help="land-cover map GeoTIFF of whole S1/S2 scenes from a fine-tuned model (streamed)",
        description="Map whole scenes with a fine-tuned segmentation (one class per pixel) or classification "
        "(one class per tile) model. Output: uint8 Cloud-Optimized GeoTIFF (overviews: the most frequent class; "
        "--no-cog: the plain tiled file) with the class names and a colour table, 255 = no "
        "data, CRS and transform of the input (scaled to the tile for classification).",
    )
    _add_scene_options(p)
    out = p.add_argument_group("map output")
    out.add_argument("--probabilities", nargs="?", const=True, default=None, metavar="PATH",
                     help="also write the class probabilities (float32, one band per class); default name OUTPUT_probabilities.tif")
    out.add_argument("--preview", nargs="?", const=True, default=None, metavar="PATH",
                     help="also write a PNG quick-look: the scene in true colour beside the map, with a legend; default name OUTPUT.png")
    p.set_defaults(run=_run_predict)


def _side_output(value, output: Path, suffix: str, multi: bool) -> Path | None:
    if value is None:
        return None
    if value is True:
        return output.with_name(output.stem + suffix)
    if multi:
        from .errors import InputShapeError

        raise InputShapeError("with many scenes, give --probabilities / --preview without a file name")
    return Path(value)


def _run_predict(args: argparse.Namespace) -> int:
    _limit_gdal_cache(args.readers)

    from .geo.predict import predict_scene
    from .geo.runner import is_multi_scene
    from .geo.stac_item import is_own_item, stac_available, stac_item_path
    from .geo.writers import is_complete_geotiff, is_own_output
    from .models import load_model

    multi = is_multi_scene(args.output, args.scenes)
    stac = args.stac and stac_available()

    def sides(job) -> tuple[Path | None, Path | None]:
        return (_side_output(args.probabilities, job.output, "_probabilities.tif", multi),
                _side_output(args.preview, job.output, ".png", multi))

    def items(job) -> list[Path]:
        probabilities = sides(job)[0]
        return [stac_item_path(p) for p in (job.output, probabilities) if p is not None] if stac else []

    def outputs(job) -> list[Path]:
        return [job.output, *(p for p in sides(job) if p is not None), *items(job)]

    def load(name: str, device: str):
        return load_model(name, device=device)

    def work(model, job, label: str, device: str):
        probabilities, preview = sides(job)
        return predict_scene(
            model, _scene_inputs(args, job), job.output, probabilities=probabilities, preview=preview, tile=args.tile,
            overlap=args.overlap, batch_size=args.batch_size, device=device, dtype=args.dtype, compress=args.compress,
            overwrite=args.overwrite or multi, resume=args.resume, check_units=args.check_units, progress=not args.quiet,
            label=label, extra_tags=_writer_tags(), checkpoint_every=args.checkpoint_every, stac=args.stac, cog=args.cog,
            readers=args.readers,
        )

    def is_complete(job) -> bool:
        probabilities, preview = sides(job)
        return (is_complete_geotiff(job.output) and (probabilities is None or is_complete_geotiff(probabilities))
                and (preview is None or is_own_output(preview)) and all(is_own_item(p) for p in items(job)))

    return _run_scenes(args, ".tif", load, work, is_complete, outputs)


# Subcommands in help order.
COMMANDS: list[Callable[[argparse._SubParsersAction], None]] = [
    _add_models,
    _add_info,
    _add_download,
    _add_cache,
    _add_convert,
    _add_push,
    _add_embed,
    _add_predict,
    _add_export,
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="s1s2",
        description="Pretrained Sentinel-1 + Sentinel-2 encoders: list, inspect and run models.",
    )
    parser.add_argument("--version", action="version", version=f"s1s2-encoders {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for add in COMMANDS:
        add(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "run", None):
        parser.print_help()
        return 1
    try:
        return int(args.run(args) or 0)
    except S1S2Error as exc:
        print(f"s1s2 {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"s1s2 {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
