"""Command line: `python -m zsdemo {index,search,info,bench}`."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Any

from zsdemo.errors import ZsdemoError

log = logging.getLogger("zsdemo")

DEFAULT_CACHE = Path("gallery_cache") / "default"


def _add_model_args(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("model (defaults: the cache's model for search/info, else env ZSDEMO_*)")
    group.add_argument("--model", help="open_clip model name (default ViT-B-32-quickgelu)")
    group.add_argument("--pretrained", help="open_clip tag (default openai), a local weights file, or 'none' (random)")
    group.add_argument("--prompts", help="prompt checkpoint (.safetensors) written by train/fit.py")
    group.add_argument("--query-precision", choices=["fp32", "bf16", "int8"], help="precision of sketch encoding")


def _encoder_config(args: argparse.Namespace, manifest: dict[str, Any] | None = None):
    from zsdemo.encoder import EncoderConfig

    base: dict[str, Any] = {}
    if manifest:  # search/info default to the model the cache was built with
        enc = manifest.get("encoder", {})
        base = {"model": enc.get("model"), "pretrained": enc.get("pretrained"), "prompts": enc.get("prompts")}
    flags = {"model": args.model, "pretrained": args.pretrained, "prompts": args.prompts,
             "query_precision": getattr(args, "query_precision", None)}
    base.update({k: v for k, v in flags.items() if v is not None})
    return EncoderConfig.from_env(**base)


def _progress_bar(desc: str):
    from tqdm import tqdm

    bar = tqdm(total=0, desc=desc, unit="photo", file=sys.stderr, disable=None)

    def update(done: int, total: int, message: str) -> None:
        bar.total = total
        bar.n = done
        bar.set_postfix_str(message, refresh=True)

    return bar, update


def cmd_index(args: argparse.Namespace) -> int:
    from zsdemo.encoder import SketchPhotoEncoder
    from zsdemo.gallery import Gallery
    from zsdemo.starter import starter_photos_dir

    sources = [Path(p) for p in args.photo_dirs] or [starter_photos_dir(Path(args.cache).parent)]
    encoder = SketchPhotoEncoder.load(_encoder_config(args))
    bar, update = _progress_bar("Indexing")
    try:
        gallery, report = Gallery.build(sources, Path(args.cache), encoder, progress=update)
    finally:
        bar.close()
    print(report.summary())
    print(f"Cache: {gallery.cache_dir} ({len(gallery)} photos, search: {gallery.backend})")
    return 0


def _load_manifest(cache: Path) -> dict[str, Any]:
    from zsdemo.gallery import read_generation

    manifest, _ = read_generation(cache)
    return manifest


def cmd_search(args: argparse.Namespace) -> int:
    from zsdemo.encoder import SketchPhotoEncoder
    from zsdemo.engine import SearchEngine
    from zsdemo.gallery import Gallery

    cache = Path(args.cache)
    encoder = SketchPhotoEncoder.load(_encoder_config(args, _load_manifest(cache)))
    engine = SearchEngine(encoder, Gallery.open(cache, encoder))
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
    from zsdemo.encoder import fingerprint_without_loading
    from zsdemo.gallery import scan_photos

    cache = Path(args.cache)
    manifest = _load_manifest(cache)
    cfg = _encoder_config(args, manifest)
    current = fingerprint_without_loading(cfg)
    entries = {e["path"]: e for e in manifest["entries"]}
    on_disk = {}
    missing_sources = [s for s in manifest["sources"] if not Path(s).is_dir()]
    present = [Path(s) for s in manifest["sources"] if Path(s).is_dir()]
    for path, _ in scan_photos(present, exclude=cache.resolve()):
        stat = path.stat()
        on_disk[str(path)] = (stat.st_size, stat.st_mtime_ns)
    new = [p for p in on_disk if p not in entries]
    removed = [p for p in entries if p not in on_disk]
    changed = [p for p, (size, mtime) in on_disk.items()
               if p in entries and (entries[p]["size"], entries[p]["mtime_ns"]) != (size, mtime)]
    model_stale = current != manifest["fingerprint"]
    info = {
        "cache": str(cache.resolve()),
        "photos": len(entries),
        "built": manifest["built"],
        "sources": manifest["sources"],
        "encoder": manifest["encoder"],
        "fingerprint": manifest["fingerprint"],
        "current_fingerprint": current,
        "stale_model": model_stale,
        "files_new": len(new), "files_changed": len(changed), "files_removed": len(removed),
        "missing_sources": missing_sources,
        "stale": model_stale or bool(new or changed or removed),
    }
    if args.json:
        print(json.dumps(info, indent=1))
        return 0
    enc = manifest["encoder"]
    print(f"Cache:    {info['cache']}")
    print(f"Photos:   {info['photos']} from {', '.join(manifest['sources'])} (built {manifest['built']})")
    print(f"Model:    {enc['model']} / weights {enc['pretrained']} / prompts {enc.get('prompts') or 'none (stock CLIP)'}")
    print(f"Fingerprint: {manifest['fingerprint']} (current model: {current})")
    if model_stale:
        print("Status:   STALE - built for another model, weights or prompts; `index` will rebuild it.")
    elif new or changed or removed:
        print(f"Status:   STALE - {len(new)} new, {len(changed)} changed, {len(removed)} removed photos; "
              "`index` will update only those.")
    else:
        print("Status:   up to date")
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    from zsdemo.bench import run_benchmarks

    run_benchmarks(model=args.model or "ViT-B-32-quickgelu", pretrained=args.pretrained or "none",
                   quick=args.quick, gallery_size=args.gallery_size, repeats=args.repeats)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m zsdemo", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("index", help="index a photo folder (recursively) into a gallery cache")
    p.add_argument("photo_dirs", nargs="*", help="photo folders (default: the bundled starter photos)")
    p.add_argument("--cache", default=str(DEFAULT_CACHE), help=f"cache folder (default {DEFAULT_CACHE})")
    _add_model_args(p)
    p.set_defaults(func=cmd_index)

    p = sub.add_parser("search", help="search a gallery cache with a sketch or photo file")
    p.add_argument("query", help="query image file")
    p.add_argument("--cache", default=str(DEFAULT_CACHE))
    p.add_argument("-k", type=int, default=10, help="number of results")
    p.add_argument("--query-type", choices=["sketch", "photo"], default="sketch")
    p.add_argument("--text", help="optional text to blend with the sketch (e.g. 'red')")
    p.add_argument("--text-weight", type=float, default=0.3)
    p.add_argument("--json", action="store_true", help="machine-readable output")
    _add_model_args(p)
    p.set_defaults(func=cmd_search)

    p = sub.add_parser("info", help="what is cached, for which model and prompts, and whether it is stale")
    p.add_argument("--cache", default=str(DEFAULT_CACHE))
    p.add_argument("--json", action="store_true")
    _add_model_args(p)
    p.set_defaults(func=cmd_info)

    p = sub.add_parser("bench", help="latency / recall / throughput benchmarks (prints figures)")
    p.add_argument("--quick", action="store_true", help="fewer repeats, smaller galleries (smoke run)")
    p.add_argument("--gallery-size", type=int, default=10_000)
    p.add_argument("--repeats", type=int, default=30)
    _add_model_args(p)
    p.set_defaults(func=cmd_bench)
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
