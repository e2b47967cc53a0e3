"""Command line: each subcommand is parse -> load_config -> run_*()."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable

from synthtl.errors import SynthTLError


def _config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", "-c", default=None, help="YAML preset: a path or a name under configs/")
    p.add_argument("--show-config", action="store_true", help="print every config key with its resolved value")
    p.add_argument("overrides", nargs="*", help="key=value overrides, e.g. real_stage.epochs=5 data.shots=4")


def _load(schema: type, args: argparse.Namespace):
    from synthtl.config import load_config, to_yaml

    cfg = load_config(schema, args.config, args.overrides)
    if args.show_config:
        print(to_yaml(cfg))
        return None
    return cfg


def cmd_finetune(args: argparse.Namespace) -> int:
    from synthtl.config import FinetuneConfig
    from synthtl.training.run import run_finetune

    cfg = _load(FinetuneConfig, args)
    if cfg is not None:
        run_finetune(cfg)
    return 0


def cmd_datasets(args: argparse.Namespace) -> int:
    from synthtl.data.datasets import dataset_status

    rows = dataset_status(args.root)
    print(f"{'name':<11} {'present':<8} {'classes':>7}  {'train split':<12} {'download':<9} title / expected path")
    for r in rows:
        print(f"{r['name']:<11} {'yes' if r['present'] else 'no':<8} {r['classes']:>7}  {r['train_split']:<12} "
              f"{'yes' if r['download'] else 'no':<9} {r['title']}  ({r['path']})")
    print("\nAlso: data.name=folder (data.root with train/ and test/ class folders), data.name=csv "
          "(data.train_csv, data.test_csv with a path,label header).")
    return 0


def cmd_models(args: argparse.Namespace) -> int:
    from synthtl.models import list_models

    for name, target in list_models():
        print(f"{name:<20} {target}")
    print("\nAny timm model works as timm:<name>[.<tag>] and any torchvision model as tv:<name>.")
    return 0


def cmd_strategies(args: argparse.Namespace) -> int:
    from synthtl.training.strategies import list_strategies

    for name, summary in list_strategies():
        print(f"{name:<16} {summary}")
    return 0


def cmd_presets(args: argparse.Namespace) -> int:
    from synthtl.config import configs_dir

    base = configs_dir()
    for p in sorted(base.rglob("*.yaml")):
        first = p.read_text().splitlines()[0] if p.read_text() else ""
        print(f"{p.relative_to(base).with_suffix('')!s:<32} {first.lstrip('# ')}")
    return 0


def cmd_split(args: argparse.Namespace) -> int:
    from synthtl.config import FinetuneConfig
    from synthtl.data.cache import scan_images
    from synthtl.data.splits import fewshot_indices, write_split
    from synthtl.training.setup import cache_root, load_real, split_seed

    cfg = _load(FinetuneConfig, args)
    if cfg is None:
        return 0
    scan = scan_images(load_real(cfg, "train"), cache_root(cfg), short_side=None, on_bad=cfg.data.on_bad_image,
                       workers=max(1, cfg.data.num_workers), progress=cfg.progress)
    src = scan.source
    if cfg.data.shots:
        idx, short = fewshot_indices(src, cfg.data.shots, split_seed(cfg))
    else:
        idx, short = list(range(len(src))), []
    write_split(args.out, src, idx, kind="train", shots=cfg.data.shots, seed=split_seed(cfg), short_classes=short)
    print(f"[synthtl] wrote {len(idx)} image ids to {args.out}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from synthtl.demo import run_demo

    run_demo(args.out, real=args.real, overrides=args.overrides)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="synthtl", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    commands: dict[str, tuple[Callable, str]] = {
        "finetune": (cmd_finetune, "fine-tune a classifier with a data-utilisation strategy"),
        "datasets": (cmd_datasets, "list datasets and whether their files are present"),
        "models": (cmd_models, "list classifier short names"),
        "strategies": (cmd_strategies, "list fine-tuning strategies"),
        "presets": (cmd_presets, "list the YAML presets under configs/"),
        "split": (cmd_split, "write a few-shot (or full) train split file"),
        "demo": (cmd_demo, "run the whole pipeline offline on the embedded default"),
    }
    for name, (fn, help_) in commands.items():
        p = sub.add_parser(name, help=help_, description=help_)
        p.set_defaults(func=fn)
        if name in ("finetune", "split"):
            _config_args(p)
        if name == "split":
            p.add_argument("--out", required=True, help="split file to write (JSON)")
        if name == "datasets":
            p.add_argument("--root", default="", help="dataset root to check (default $SYNTHTL_DATA or ./data)")
        if name == "demo":
            p.add_argument("--out", default="demo_out", help="where the demo writes everything")
            p.add_argument("--real", action="store_true", help="run a small real study (GPU + hub access needed)")
            p.add_argument("overrides", nargs="*", help="key=value overrides for the demo's fine-tuning runs")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except SynthTLError as e:
        print(f"synthtl {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"synthtl {args.command}: interrupted; re-run the same command to resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
