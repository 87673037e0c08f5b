"""Command line: `python -m zsdemo {index,search,info,export,query-paths}`."""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
from pathlib import Path
from typing import Any

from zsdemo.config import (
    DEFAULT_BATCH_SIZE,
    DEFAULT_MODEL,
    QUERY_PRECISIONS,
    ServeConfig,
    resolve_hub_file,
    resolve_serve_config,
)
from zsdemo.errors import ZsdemoError

log = logging.getLogger("zsdemo")



def _add_model_args(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("model (defaults: flag > env ZSDEMO_* > the cache's own model > built-in)")
    group.add_argument("--model", help=f"open_clip model name (default {DEFAULT_MODEL})")
    group.add_argument("--pretrained", help="open_clip tag (default openai), a local weights file, or 'none' (random)")
    group.add_argument("--prompts", help="prompt checkpoint (.safetensors) written by train/fit.py")
    group.add_argument("--query-precision", help=f"how sketch queries run: {', '.join(QUERY_PRECISIONS)}")


def _flags(args: argparse.Namespace) -> dict[str, Any]:
    return {"model": args.model, "pretrained": args.pretrained, "prompts": args.prompts,
            "query_precision": getattr(args, "query_precision", None), "cache": args.cache,
            "galleries": getattr(args, "photo_dirs", None)}


def _serve_config(args: argparse.Namespace) -> ServeConfig:
    """The settings from flags and environment alone (which cache; before it is read)."""
    return resolve_serve_config(_flags(args))


def _cache_config(args: argparse.Namespace) -> ServeConfig:
    """The settings the cache is served with: its manifest fills what flags and environment leave open (the
    same function as the app's)."""
    from zsdemo.store.sources import resolve_for_cache

    return resolve_for_cache(_flags(args))


def _encoder(config: ServeConfig, **overrides: Any):
    from zsdemo.model.encoder import EncoderConfig, SketchPhotoEncoder

    prompts = resolve_hub_file(config.prompts) if config.prompts else None
    cfg = EncoderConfig.from_serve(config, prompts)
    if overrides:  # indexing: photos are always encoded in fp32, so no sketch query path needs choosing
        cfg = dataclasses.replace(cfg, **{"query_precision": "fp32", **overrides})
    return SketchPhotoEncoder.load(cfg)


def _progress_bar(desc: str):
    from tqdm import tqdm

    bar = tqdm(total=0, desc=desc, unit="photo", file=sys.stderr, disable=None)

    def update(done: int, total: int, message: str) -> None:
        bar.total = total
        bar.n = done
        bar.set_postfix_str(message, refresh=True)

    return bar, update


def cmd_index(args: argparse.Namespace) -> int:
    """Index photo folders; under torchrun / accelerate launch the encoding is spread over the processes
    (zsdemo.store.distributed): only the main process takes the cache lock, plans, merges and prints."""
    from zsdemo.store.build import build_gallery, checked_sources
    from zsdemo.store.distributed import DistributedRunner, Processes, follow
    from zsdemo.store.layout import recorded_sources
    from zsdemo.store.sources import gallery_sources

    procs = Processes()
    try:
        cache = _serve_config(args).cache_dir
        config = _cache_config(args)  # an existing cache keeps its model unless told otherwise
        if not procs.is_main:
            encoder = _encoder(config, device=str(procs.device), batch_size=args.batch_size)
            follow(procs, encoder, args.workers, args.batch_size, args.precision)
            return 0
        runner = DistributedRunner(procs, args.workers, args.batch_size, args.precision)
        try:
            sources = gallery_sources(cache, config.galleries)
            if sources is None:
                print(f"Updating {cache} from the folders it records: "
                      f"{', '.join(map(str, recorded_sources(cache) or []))}", file=sys.stderr)
            checked_sources(sources, Path(cache).expanduser().resolve())  # an empty folder: refused before loading
            encoder = _encoder(config, device=str(procs.device), batch_size=args.batch_size)
            bar, update = _progress_bar("Indexing")
            try:
                gallery, report = build_gallery(sources, cache, encoder, progress=update,
                                                on_wait=lambda message: print(message, file=sys.stderr),
                                                runner=runner, shard_size=args.shard_size)
            finally:
                bar.close()
        finally:
            runner.announce(None)  # the other ranks stop waiting if there was nothing to encode (or an error)
        print(report.summary())
        if runner.photos_per_s is not None:
            print(f"Encoding: {runner.encoded} photos on {procs.world} process(es) ({procs.device}): "
                  f"{runner.photos_per_s:.2f} photos/s", file=sys.stderr)
        print(f"Cache: {gallery.cache_dir} ({len(gallery)} photos, search: {gallery.backend})")
        return 0
    finally:
        procs.close()


def cmd_export(args: argparse.Namespace) -> int:
    from zsdemo.store.export import export_parquet

    cache = _serve_config(args).cache_dir
    out, rows = export_parquet(cache, Path(args.out))
    print(f"Exported {rows} photos from {cache} to {out}")
    return 0


def _model_flags(args: argparse.Namespace) -> str:
    """The model flags given on this command line, to repeat them in a suggested command."""
    given = [(flag, getattr(args, name, None)) for flag, name in
             (("--model", "model"), ("--pretrained", "pretrained"), ("--prompts", "prompts"))]
    return "".join(f" {flag} {value}" for flag, value in given if value)


def _load_manifest(cache: Path) -> dict[str, Any]:
    from zsdemo.store.layout import read_generation

    manifest, _ = read_generation(cache)
    return manifest


def cmd_search(args: argparse.Namespace) -> int:
    from zsdemo.model.preprocess import open_image
    from zsdemo.query.select import prepare_query_path
    from zsdemo.search.engine import SearchEngine
    from zsdemo.store.gallery import Gallery

    open_image(args.query, display_name=args.query)  # a missing or unreadable query fails before the model loads
    config = _serve_config(args)
    cache = config.cache_dir
    _load_manifest(cache)  # a missing or damaged cache is refused before the model loads
    encoder = _encoder(_cache_config(args))
    engine = SearchEngine(encoder, Gallery.open(cache, encoder))
    if args.query_type == "sketch":  # the path chosen on this machine before, if any; one query never pays for a choice
        prepare_query_path(encoder, choose=False, check=False)
    if args.query_type == "photo":
        result = engine.search_photo(args.query, k=args.k)
    else:
        result = engine.search_sketch(args.query, k=args.k, text=args.text, text_weight=args.text_weight)
    rows = [{"rank": i + 1, "path": str(hit.photo), "name": hit.name, "score": round(hit.score, 6)}
            for i, hit in enumerate(result.hits)]
    if args.json:
        print(json.dumps({"query": args.query, "query_type": args.query_type, "results": rows,
                          "seconds": round(result.seconds, 4)}, indent=1))
    else:
        for row in rows:
            print(f"{row['rank']:>3}  {row['score']:+.4f}  {row['path']}")
    return 0


def cmd_info(args: argparse.Namespace) -> int:
    from zsdemo.model.encoder import EncoderConfig, fingerprint_without_loading
    from zsdemo.store.plan import plan_update

    cache = _serve_config(args).cache_dir
    manifest = _load_manifest(cache)
    config = _cache_config(args)
    current = fingerprint_without_loading(EncoderConfig.from_serve(config, config.prompts))
    present = [Path(s) for s in manifest["sources"] if Path(s).is_dir()]
    missing_sources = [s for s in manifest["sources"] if not Path(s).is_dir()]
    plan = plan_update(present, cache, current, manifest=manifest)
    plan.sources_changed = plan.sources_changed and not missing_sources
    update = f"python -m zsdemo index --cache {cache}{_model_flags(args)}"
    info = {
        "cache": str(cache.resolve()),
        "photos": len(manifest["entries"]),
        "built": manifest["built"],
        "sources": manifest["sources"],
        "encoder": manifest["encoder"],
        "fingerprint": manifest["fingerprint"],
        "current_fingerprint": current,
        "stale_model": plan.stale_model,
        "files_new_or_changed": len(plan.encode), "files_removed": len(plan.remove),
        "files_unreadable": len(plan.skip),
        "missing_sources": missing_sources,
        "stale": plan.changed,
        "update_command": update,
    }
    if args.json:
        print(json.dumps(info, indent=1))
        return 0
    enc = manifest["encoder"]
    print(f"Cache:    {info['cache']}")
    print(f"Photos:   {info['photos']} from {', '.join(manifest['sources'])} (built {manifest['built']})")
    print(f"Model:    {enc['model']} / weights {enc['pretrained']} / prompts {enc.get('prompts') or 'none (stock CLIP)'}")
    print(f"Fingerprint: {manifest['fingerprint']} (current model: {current})")
    if plan.skip:
        print(f"Skipped:  {len(plan.skip)} unreadable files (not retried until they change)")
    if missing_sources:
        print(f"Warning:  photo folders missing: {', '.join(missing_sources)}")
    if plan.stale_model:
        print(f"Status:   STALE - built for another model, weights or prompts. `{update}` re-encodes the same photos.")
    elif plan.changed:
        print(f"Status:   STALE - {len(plan.encode)} new or changed, {len(plan.remove)} removed photos. "
              f"`{update}` updates only those.")
    else:
        print("Status:   up to date")
    return 0


def cmd_query_paths(args: argparse.Namespace) -> int:
    """The sketch query paths kept on this machine (exported ONNX files, remembered choices); --clear removes them."""
    from zsdemo.query.onnx_paths import query_cache_dir
    from zsdemo.query.select import CHOICES_FILE, read_choices

    folder = query_cache_dir()
    files = sorted(folder.glob("*.onnx")) if folder.is_dir() else []
    choices = read_choices(folder)
    if args.clear:
        for path in [*files, folder / CHOICES_FILE]:
            path.unlink(missing_ok=True)
        print(f"Removed {len(files)} exported query paths and {len(choices)} remembered choices from {folder}; "
              "the next start chooses again.")
        return 0
    size = sum(path.stat().st_size for path in files)
    print(f"Query paths in {folder}: {len(files)} exported files ({size / 1e6:.1f} MB), {len(choices)} remembered "
          "choices (ZSDEMO_QUERY_CACHE moves the folder; --clear empties it).")
    for record in choices.values():
        speed = f"{record.get('ms'):.1f} ms, fp32 {record.get('fp32_ms'):.1f} ms" if record.get("ms") else ""
        print(f"  {record.get('path')} on {record.get('cpu')} ({speed}; chosen {record.get('when')})")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m zsdemo", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("index", help="index a photo folder (recursively) into a gallery cache")
    p.add_argument("photo_dirs", nargs="*", help="photo folders (default: the folders the cache records; for a new "
                                                 "cache, the bundled starter photos)")
    p.add_argument("--cache", help="cache folder (default gallery_cache/<first folder>-<hash>, or gallery_cache/starter)")
    group = p.add_argument_group("scale (see zsdemo/store/distributed.py: run under torchrun or accelerate launch "
                                 "for several processes)")
    group.add_argument("--workers", type=int, default=1, help="DataLoader processes decoding photos, per process "
                                                               "(default 1; 0 = decode in the encoding process)")
    group.add_argument("--batch-size", type=int, default=DEFAULT_BATCH_SIZE,
                       help=f"photos per encoder batch (default {DEFAULT_BATCH_SIZE})")
    group.add_argument("--shard-size", type=int, help="photos per resumable shard (default: about 1/64 of the "
                                                      "photos, 16 to 1024)")
    group.add_argument("--precision", choices=["auto", "fp32", "bf16", "fp16"], default="auto",
                       help="photo encoding: auto = bf16 autocast on GPU, fp32 on CPU")
    _add_model_args(p)
    p.set_defaults(func=cmd_index)

    p = sub.add_parser("export", help="write a gallery cache as Parquet (one row per photo, with its embedding)")
    p.add_argument("out", help="output .parquet file")
    p.add_argument("--cache", help="cache folder (default gallery_cache/starter)")
    p.set_defaults(func=cmd_export, model=None, pretrained=None, prompts=None)

    p = sub.add_parser("search", help="search a gallery cache with a sketch or photo file")
    p.add_argument("query", help="query image file")
    p.add_argument("--cache", help="cache folder (default gallery_cache/starter)")
    p.add_argument("-k", type=int, default=10, help="number of results")
    p.add_argument("--query-type", choices=["sketch", "photo"], default="sketch")
    p.add_argument("--text", help="optional text to blend with the sketch (e.g. 'red')")
    p.add_argument("--text-weight", type=float, default=0.3)
    p.add_argument("--json", action="store_true", help="machine-readable output")
    _add_model_args(p)
    p.set_defaults(func=cmd_search)

    p = sub.add_parser("info", help="what is cached, for which model and prompts, and whether it is stale")
    p.add_argument("--cache", help="cache folder (default gallery_cache/starter)")
    p.add_argument("--json", action="store_true")
    _add_model_args(p)
    p.set_defaults(func=cmd_info)

    p = sub.add_parser("query-paths", help="list (or --clear) the sketch query paths exported and chosen on this "
                                           "machine")
    p.add_argument("--clear", action="store_true", help="remove them: the next start exports and chooses again")
    p.set_defaults(func=cmd_query_paths)

    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    log.setLevel(logging.DEBUG if args.verbose else logging.INFO)
    try:
        return args.func(args)
    except ZsdemoError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; the cache was left as it was before this run", file=sys.stderr)
        return 130
