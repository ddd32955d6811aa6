"""The ``s1s2`` command.

Each subcommand is a pair of functions: ``_add_<name>(subparsers)`` declares its arguments and
``_run_<name>(args)`` does the work and returns an exit code. Errors of this package
(:class:`~s1s2_encoders.errors.S1S2Error`) are printed as one clear line and exit with status 2;
anything else is a bug and shows its traceback.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Callable, Sequence

from . import __version__
from .errors import S1S2Error


def _add_models(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("models", help="list the registry's models and whether their weights are available")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(run=_run_models)


def _run_models(args: argparse.Namespace) -> int:
    from .registry import list_models

    entries = list_models()
    if args.json:
        rows = [
            {
                "name": e.name, "architecture": e.architecture, "available": e.available, "status": e.status,
                "repo_id": e.repo_id, "revision": e.revision, "sha256": e.sha256, "license": e.license,
                "input_size": e.input_size, "description": e.description,
            }
            for e in entries
        ]
        print(json.dumps(rows, indent=2))
        return 0
    width = max(len(e.name) for e in entries)
    print(f"{'name':<{width}}  {'architecture':<12}  status")
    for e in entries:
        print(f"{e.name:<{width}}  {e.architecture:<12}  {e.status}")
    print("\nUse `s1s2 info NAME` for details; load_backbone(NAME, pretrained=False) builds random weights.")
    return 0


def _add_info(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("info", help="show a registry entry or a checkpoint folder: bands, units, normalisation, licence")
    p.add_argument("model", help="registry name or checkpoint folder")
    p.set_defaults(run=_run_info)


def _run_info(args: argparse.Namespace) -> int:
    from pathlib import Path

    from .checkpoint import read_config
    from .registry import REGISTRY

    if args.model in REGISTRY:
        entry = REGISTRY[args.model]
        config = entry.config()
        print(f"name:          {entry.name}")
        print(f"description:   {entry.description}")
        print(f"status:        {entry.status}")
        if entry.available:
            print(f"hub:           {entry.repo_id} @ {entry.revision}")
            print(f"sha256:        {entry.sha256}")
        print(f"original:      {entry.original_weights}")
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
    if args.model in REGISTRY and not REGISTRY[args.model].available:
        print()
        print(REGISTRY[args.model].how_to_get())
    return 0


def _add_download(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("download", help="download a model into the Hugging Face cache (for later offline use)")
    p.add_argument("model", help="registry name or hf-hub:ORG/REPO[@REV]")
    p.add_argument("--revision", default=None)
    p.add_argument("--cache-dir", default=None)
    p.set_defaults(run=_run_download)


def _run_download(args: argparse.Namespace) -> int:
    from .hub import resolve_model

    source = resolve_model(args.model, revision=args.revision, cache_dir=args.cache_dir)
    print(f"{args.model}: {source.folder} (sha256 {source.sha256})")
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
    from .hub import push_to_hub

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
            "embedding out, dynamic batch (and height/width for ResNet). The file is checked against PyTorch "
            "after writing and the largest difference is printed."
        ),
    )
    p.add_argument("model", help="checkpoint folder (or registry name / hf-hub:ORG/REPO)")
    p.add_argument("--format", required=True, choices=["onnx", "torch-export"], help="onnx (.onnx) or torch-export (.pt2)")
    p.add_argument("-o", "--output", required=True, help="file to write (.onnx / .pt2)")
    p.add_argument("--modality", default="both", choices=["both", "s1", "s2"], help="fused S1+S2 (default) or one tower")
    p.add_argument("--height", type=int, default=None, help="input height of a Swin export (default: the checkpoint's crop size)")
    p.add_argument("--width", type=int, default=None, help="input width of a Swin export (default: the height)")
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
            model, args.output, format=args.format, modality=args.modality, height=args.height, width=args.width,
            opset=args.opset, overwrite=args.overwrite, check=not args.no_check,
        )
    except (FileExistsError, ValueError) as exc:
        print(f"s1s2 export: error: {exc}", file=sys.stderr)
        return 2
    size = f"{result.height} x {result.width}" if result.height is not None else "dynamic H x W (>= 33)"
    print(f"wrote {result.path} ({args.format}): inputs {', '.join(result.inputs)}, batch dynamic, {size}, "
          f"output embedding (B, {result.embed_dim})")
    if result.max_abs_diff is not None:
        shapes = ", ".join(f"{b}x{h}x{w}" for b, h, w in result.checked_shapes)
        print(f"max |exported - PyTorch| = {result.max_abs_diff:.3g} (float32; B x H x W = {shapes})")
    elif not args.no_check:
        print("not checked: onnxruntime is not installed")
    return 0


# Subcommands in help order.
COMMANDS: list[Callable[[argparse._SubParsersAction], None]] = [
    _add_models,
    _add_info,
    _add_download,
    _add_convert,
    _add_push,
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
