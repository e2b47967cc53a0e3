"""synthtl: can images from a text-to-image model make a fine-tuned classifier better, and how should they be used?

Generate synthetic training sets (Stable Diffusion, styles, img2img), filter them, fine-tune classifiers with the
paper's strategies (Li et al., arXiv 2403.19866) and their controls, run whole studies and build their reports.
Start with `synthtl demo` (offline, CPU). `synthtl <command> --help` shows a command's arguments and examples,
`synthtl <command> --show-config` every key it takes with its help (also in docs/config.md).
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import json
import os
import signal
import sys
import tempfile
import traceback
import warnings
from collections.abc import Callable
from functools import partial
from pathlib import Path

from synthtl import __version__
from synthtl.errors import ConfigError, SynthTLError
from synthtl.files import cache_home
from synthtl.signals import Stopped, requeue_slurm, stop_signals


def _load(schema: type, args: argparse.Namespace):
    from synthtl.config import load_config
    from synthtl.config.reference import commented_yaml

    cfg = load_config(schema, args.config, args.overrides)
    if args.show_config:
        print(commented_yaml(cfg), end="")
        return None
    return cfg


def _run_kind(kind: str, args: argparse.Namespace) -> int:
    """A stage command: its config (or --show-config), then its run function (`jobs.KINDS`)."""
    from synthtl.jobs import KINDS

    if (cfg := _load(KINDS[kind].schema, args)) is not None:
        KINDS[kind].run(cfg)
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
    from synthtl.strategies import TABLE

    for s in TABLE:  # the report's order
        print(f"{s.name:<16} {s.origin:<10} {' -> '.join(s.stages):<18} {s.summary}")
    return 0


def cmd_presets(args: argparse.Namespace) -> int:
    from synthtl.config import configs_dir, find_preset, load_config
    from synthtl.config.reference import commented_yaml, schema_of_preset

    base = configs_dir()
    if args.show:
        path = find_preset(args.show)
        schema = schema_of_preset(path.resolve().relative_to(base) if path.resolve().is_relative_to(base) else path)
        print(path.read_text().rstrip() + "\n")
        if schema is None:
            raise ConfigError(f"{path} is not under configs/<finetune|generate|style|filter|studies>/: its keys are "
                              "unknown; give a shipped preset's name")
        print(f"# {path.name} resolved (defaults < _base_ < the file), every key with its help:")
        print(commented_yaml(load_config(schema, str(path), [])), end="")
        return 0
    for p in sorted(base.rglob("*.yaml")):
        comments = [line[1:].strip() for line in p.read_text().splitlines() if line.startswith("#")]
        about = [c for c in comments if not c.startswith(("synthtl ", "torchrun "))]
        first = next((i for i, c in enumerate(about) if c.endswith(".")), len(about) - 1)  # the first sentence, whole
        print(f"{p.relative_to(base).with_suffix('')!s:<32} " + "\n".ljust(34).join(about[:first + 1]))
    return 0


def cmd_split(args: argparse.Namespace) -> int:
    from synthtl.config import FinetuneConfig
    from synthtl.data.datasets import load_data
    from synthtl.data.prepare import split_seed
    from synthtl.data.splits import train_indices, write_split

    if (cfg := _load(FinetuneConfig, args)) is None:
        return 0
    images = load_data(cfg.data, "train")
    idx, short = train_indices(images, cfg.data, split_seed(cfg))  # the selection fine-tuning and style make
    write_split(args.out, images, idx, kind="train", shots=cfg.data.shots, seed=split_seed(cfg), short_classes=short)
    print(f"[synthtl] wrote {len(idx)} image ids to {args.out}")
    return 0


def cmd_generate(args: argparse.Namespace) -> int:
    from synthtl.generation import shards

    if args.status:
        st = shards.status(args.status)
        for name, (done, total) in st["classes"].items():
            print(f"{done:>7}/{total:<7} {name}")
        print(f"{st['done']:>7}/{st['total']:<7} all classes ({st['redraws']} redraws)")
        w = st["stats"]
        print(f"work of {w['shards']} shard(s): {w['images']} images, {w['seconds']:.1f} device-s, "
              f"{w['gpu_seconds']:.0f} GPU-s")
        return 0
    if args.validate:
        res = shards.validate(args.validate, repair=args.repair)
        for log, n in res["torn"].items():
            print(f"torn     progress/{log}  (cut {n} bytes of an unfinished last line)")
        for log, lines in res["damaged"].items():
            print(f"damaged  progress/{log}  (dropped line(s) {', '.join(map(str, lines))}: the next generate run "
                  "redraws their images)")
        if res["temps"]:
            print(f"removed  {res['temps']} leftover temp files")
        for rel in res["missing"]:
            print(f"missing  {rel}")
        for rel in res["corrupt"]:
            print(f"corrupt  {rel}" + ("  (deleted: the next generate run redraws it)" if args.repair else ""))
        print(f"checked {res['checked']} finished images: {len(res['missing'])} missing, {len(res['corrupt'])} corrupt")
        return 0 if not (res["missing"] or res["corrupt"]) else 1
    if args.repair:
        raise ConfigError("--repair goes with --validate DIR")
    return _run_kind("generate", args)


def cmd_filter(args: argparse.Namespace) -> int:
    if args.set:  # key=value: no set was given (in the config file, or missing); argparse took the first override
        args.overrides.insert(0, args.set if "=" in args.set else f"set_dir={args.set}")
    return _run_kind("filter", args)


def cmd_grid_images(args: argparse.Namespace) -> int:
    from synthtl.config import FinetuneConfig, load_config
    from synthtl.generation.sheets import contact_sheets

    labels = args.labels.split(",") if args.labels else [Path(s).name for s in args.sets]
    if len(labels) != len(args.sets):
        raise ConfigError(f"--labels has {len(labels)} names for {len(args.sets)} sets")
    real = None
    if args.overrides:
        from synthtl.data.datasets import load_data

        real = load_data(load_config(FinetuneConfig, None, args.overrides).data, "train")
    paths = contact_sheets(list(zip(labels, args.sets, strict=True)), args.out, args.per_row, real)
    print(f"[synthtl] wrote {len(paths)} contact sheets to {args.out}")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from synthtl.generation.export import export_imagefolder

    res = export_imagefolder(args.set, args.out, link=not args.copy, allow_partial=args.allow_partial)
    unfinished = f" (unfinished set: {res['done']} of {res['total']} planned images)" if res["partial"] else ""
    print(f"[synthtl] exported {res['images']} images to {args.out}{unfinished}; read it with "
          f"datasets.load_dataset('{args.out}')")
    return 0


def cmd_study(args: argparse.Namespace) -> int:
    """Runs (or resumes) a study, or prints its plan (--dry-run) or where it stands (--status).

    Exit status: 0 finished (or the plan/status printed); 75 (EX_TEMPFAIL) nothing failed but jobs are unfinished
    (another process runs them or makes their inputs, or they were submitted to Slurm without waiting): run the same
    command again later (a script can loop while it returns 75); 2 a job failed or an input is bad; 130 interrupted.
    With --report, the report is built only once the study has finished."""
    from synthtl.config import StudyConfig
    from synthtl.experiments.runner import run_study, study_status

    if args.preset and "=" in args.preset:  # argparse took the first override for the preset
        args.overrides.insert(0, args.preset)
        args.preset = None
    if args.preset and args.config:
        raise ConfigError("give the study as a preset name or as --config FILE, not both")
    args.config = args.config or (f"studies/{args.preset}" if args.preset and not Path(args.preset).is_file()
                                  else args.preset)
    if not args.config:
        raise ConfigError("which study? e.g. `synthtl study paper/utilization` or `synthtl study --config grid.yaml`; "
                          "`synthtl presets` lists them")
    if (cfg := _load(StudyConfig, args)) is None:
        return 0
    if args.status:
        print(study_status(cfg))
        return 0
    summary = run_study(cfg, dry_run=args.dry_run)
    if args.dry_run:
        return 0
    if unfinished := summary["unfinished"]:
        parts = [f"{len(summary[k])} {what}" for k, what in (
            ("elsewhere", "running in another process"), ("waiting", "waiting for inputs another process makes"),
            ("submitted", "submitted to Slurm")) if summary[k]]
        print(f"[synthtl] the study is not finished: {len(unfinished)} of {summary['jobs']} jobs are unfinished "
              f"({', '.join(parts) or 'see --status'}); run the same command again once they are done "
              f"(`synthtl study ... --status` shows where it stands)")
        if args.report:
            print(f"[synthtl] no report built: {len(unfinished)} jobs are unfinished (`synthtl report {cfg.folder}` "
                  "builds one from the finished runs)")
        return os.EX_TEMPFAIL  # 75, sysexits.h: a temporary failure, try again later
    if args.report:
        from synthtl.reporting.report import build_report

        print(f"[synthtl] report: {build_report(cfg.folder, cfg.report)['html']}")
    else:
        print(f"[synthtl] study finished; build its report with: synthtl report {cfg.folder}")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from synthtl.config import with_overrides
    from synthtl.reporting.report import build_report, study_report_config

    paths = build_report(args.study, with_overrides(study_report_config(Path(args.study)), args.overrides))
    print(f"[synthtl] report: {paths['html']} (also {paths['markdown']}, tables/*.csv|.tex, figures/*.png)")
    return 0


def cmd_runs(args: argparse.Namespace) -> int:
    from synthtl.reporting.collect import some_runs
    from synthtl.reporting.render import to_text
    from synthtl.reporting.tables import runs_table

    runs = some_runs(Path(args.folder))
    print(to_text(runs_table(runs)) + f"\n[synthtl] {len(runs)} finished run(s); `synthtl report {args.folder}` "
          "compares them")
    return 0


def cmd_forecast(args: argparse.Namespace) -> int:
    from synthtl.forecast import ForecastConfig, console_text, run_forecast

    if (cfg := _load(ForecastConfig, args)) is None:
        return 0
    res = run_forecast(args.study, cfg)
    print(console_text(res["records"]))
    print(f"[synthtl] wrote {res['json']} and {len(res['figures'])} figure(s) beside it")
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    from synthtl.predict import load_model, predict

    trained = load_model(args.run, args.weights)
    for row in predict(trained, args.images, top_k=args.top_k):
        if args.json:
            print(json.dumps(row))
        else:
            print(f"{row['path']}: " + ", ".join(f"{name} {p:.3f}" for name, p in row["top"]))
    return 0


def cmd_export_model(args: argparse.Namespace) -> int:
    from synthtl.predict import export_model

    out = export_model(args.run, args.out, args.weights)
    print(f"[synthtl] wrote {out / 'model.safetensors'} and {out / 'config.json'}; load it with "
          f"timm.create_model('local-dir:{out}', pretrained=True)")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from synthtl.demo import run_demo

    run_demo(args.out, real=args.real, overrides=args.overrides)
    return 0


COMMANDS: dict[str, tuple[Callable, str]] = {
    "finetune": (partial(_run_kind, "finetune"), "fine-tune a classifier with a data-utilisation strategy"),
    "datasets": (cmd_datasets, "list datasets and whether their files are present"),
    "models": (cmd_models, "list classifier short names"),
    "strategies": (cmd_strategies, "list fine-tuning strategies"),
    "presets": (cmd_presets, "list the YAML presets under configs/, or print one with every key's help (--show)"),
    "split": (cmd_split, "write a few-shot (or full) train split file"),
    "generate": (cmd_generate, "generate a synthetic training set with Stable Diffusion (resumable, sharded)"),
    "filter": (cmd_filter, "score a generated set's images (CLIP or a real-data classifier) and keep the best"),
    "learn-style": (partial(_run_kind, "style"), "learn a dataset style: a token (DSI), a token per class, or a LoRA "
                    "(method=lora)"),
    "grid-images": (cmd_grid_images, "write per-class contact sheets: real beside synthetic images"),
    "export": (cmd_export, "export a generated set as a Hugging Face imagefolder dataset"),
    "study": (cmd_study, "run (or resume) a grid of style, generation and fine-tuning jobs from a preset"),
    "report": (cmd_report, "build tables, plots and an HTML report from a study folder"),
    "runs": (cmd_runs, "list the finished runs under a folder (a study, or any out_dir) with settings and results"),
    "forecast": (cmd_forecast, "predict accuracy and GPU-hours at larger synthetic volumes from a finished study"),
    "predict": (cmd_predict, "classify images with a finished fine-tuning run's model"),
    "export-model": (cmd_export_model, "export a finished run's classifier as a timm folder (safetensors + config)"),
    "demo": (cmd_demo, "run the whole pipeline offline on the embedded default"),
}
EXAMPLES = {  # shown under each command's --help
    "finetune": ["synthtl finetune -c finetune/resnet18 data.name=pets strategy=bridged++ synthetic.path=gen/pets",
                 "synthtl finetune -c finetune/tiny_cpu data.name=folder data.root=~/my_images   # your own folder"],
    "datasets": ["synthtl datasets --root ~/data"], "models": ["synthtl models"], "strategies": ["synthtl strategies"],
    "presets": ["synthtl presets", "synthtl presets --show finetune/resnet18"],
    "split": ["synthtl split data.name=pets data.shots=4 seed=0 --out splits/pets_4shot.json"],
    "generate": ["synthtl generate -c generate/sd15 data.name=pets out_dir=gen/pets per_class=1000",
                 "synthtl generate --status gen/pets", "synthtl generate --validate gen/pets --repair"],
    "filter": ["synthtl filter gen/pets -c filter/clip keep.fraction=0.8",
               "synthtl filter gen/pets -c filter/classifier classifier.run=runs/pets/resnet18/vanilla/full/seed0"],
    "learn-style": ["synthtl learn-style -c style/dsi data.name=pets out_dir=styles/pets_dsi",
                    "synthtl learn-style -c style/lora data.name=pets out_dir=styles/pets_lora   # a LoRA"],
    "grid-images": ["synthtl grid-images gen/pets gen/pets_dsi --labels single,dsi --out sheets --real data.name=pets"],
    "export": ["synthtl export gen/pets --out hf/pets"],
    "study": ["synthtl study paper/utilization --dry-run", "synthtl study demo grid.seeds=[0] --report"],
    "report": ["synthtl report studies/utilization", "synthtl report runs   # any folder of finetune runs"],
    "runs": ["synthtl runs runs", "synthtl runs studies/utilization"], "demo": ["synthtl demo --out demo_out"],
    "forecast": ["synthtl forecast studies/pilot at=[2000,3000,5000]",
                 "synthtl forecast studies/pilot strategies=[bridged++] plateau_tol=0.25"],
    "predict": ["synthtl predict runs/pets/resnet18/bridged++/full/seed0 cat.jpg dog.jpg --top-k 3"],
    "export-model": ["synthtl export-model runs/pets/resnet18/bridged++/full/seed0 --out models/pets"],
}
CONFIG = [(("--config", "-c"), {"default": None, "help": "YAML preset: a path or a name under configs/"}),
          (("--show-config",), {"action": "store_true", "help": "print every key with its resolved value and help "
                                "(YAML: save it as a preset)"}),
          (("overrides",), {"nargs": "*", "help": "key=value overrides, e.g. real_stage.epochs=5 data.shots=4"})]
OPTIONS: dict[str, list[tuple[tuple, dict]]] = {  # each command's own arguments
    "finetune": CONFIG, "split": [(("--out",), {"required": True, "help": "split file to write (JSON)"}), *CONFIG],
    "generate": [(("--status",), {"metavar": "DIR", "help": "print done/total per class of a generated set and exit"}),
                 (("--validate",), {"metavar": "DIR", "help": "decode every finished image; report missing/corrupt"}),
                 (("--repair",), {"action": "store_true", "help": "with --validate: mend torn log lines, remove temp "
                                  "files, delete corrupt files"}), *CONFIG],
    "learn-style": CONFIG,
    "filter": [(("set",), {"nargs": "?", "default": None, "help": "a finished generated set (out_dir of generate)"}),
               *CONFIG],
    "presets": [(("--show",), {"metavar": "NAME", "help": "print a preset resolved, with every key's help"})],
    "study": [(("preset",), {"nargs": "?", "default": None, "help": "a preset under configs/studies/ or a YAML file"}),
              (("--dry-run",), {"action": "store_true", "help": "print the plan and a GPU-hour estimate, run nothing"}),
              (("--status",), {"action": "store_true", "help": "finished / running elsewhere / failed / to run per "
                               "stage; runs nothing"}),
              (("--report",), {"action": "store_true", "help": "build the report when the study has finished"}),
              *CONFIG[:2], (("overrides",), {"nargs": "*", "help": "key=value overrides, e.g. grid.seeds=[0]"})],
    "report": [(("study",), {"help": "a study folder (runs/, gen/ ...) or any folder of finetune runs"}),
               (("overrides",), {"nargs": "*", "help": "report key=value overrides, e.g. features=resnet50"})],
    "runs": [(("folder",), {"help": "a study folder, or any folder holding run folders (e.g. finetune's out_dir)"})],
    "forecast": [(("study",), {"help": "a finished study folder with a volume grid (e.g. `synthtl study pilot`)"}),
                 *CONFIG[:2], (("overrides",), {"nargs": "*", "help": "forecast key=value overrides, e.g. "
                                                "at=[2000,3000] (--show-config lists them)"})],
    "grid-images": [(("sets",), {"nargs": "+", "help": "generated-set folders"}),
                    (("--labels",), {"default": "", "help": "comma-separated row labels, one per set"}),
                    (("--out",), {"required": True, "help": "folder for the PNG contact sheets"}),
                    (("--per-row",), {"type": int, "default": 8, "help": "images per row of each sheet"}),
                    (("--real",), {"dest": "overrides", "action": "append", "default": [], "metavar": "KEY=VALUE",
                                   "help": "data.* overrides naming the real dataset to show first, e.g. --real "
                                   "data.name=pets"})],
    "export": [(("set",), {"help": "generated-set folder"}), (("--out",), {"required": True, "help": "output folder"}),
               (("--copy",), {"action": "store_true", "help": "copy files instead of hard-linking them"}),
               (("--allow-partial",), {"action": "store_true", "help": "export the finished images of an unfinished "
                                       "set (the dataset card says so)"})],
    "datasets": [(("--root",), {"default": "", "help": "dataset root to check (default $SYNTHTL_DATA or ./data)"})],
    "predict": [(("run",), {"help": "a finished run folder (with result.json)"}),
                (("images",), {"nargs": "+", "help": "image files"}),
                (("--top-k",), {"type": int, "default": 5, "help": "classes shown per image"}),
                (("--weights",), {"default": "selected", "help": "selected (what result.json reports) or ema"}),
                (("--json",), {"action": "store_true", "help": "one JSON row per image"})],
    "export-model": [(("run",), {"help": "a finished run folder (with result.json)"}),
                     (("--out",), {"required": True, "help": "the folder to write"}),
                     (("--weights",), {"default": "selected", "help": "selected (what result.json reports) or ema"})],
    "demo": [(("--out",), {"default": "demo_out", "help": "where the demo writes everything"}),
             (("--real",), {"action": "store_true", "help": "run a small real study (GPU + hub access needed)"}),
             (("overrides",), {"nargs": "*", "help": "key=value overrides of the demo study (e.g. grid.seeds=[0])"})],
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="synthtl", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"synthtl {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--verbose", action="store_true", help="on an error, also print its underlying cause")
    for name, (fn, help_) in COMMANDS.items():
        p = sub.add_parser(name, help=help_, description=help_, parents=[common], epilog="examples:\n  " + "\n  ".join(
            EXAMPLES[name]), formatter_class=argparse.RawDescriptionHelpFormatter)
        p.set_defaults(func=fn)
        for flags, kwargs in OPTIONS.get(name, []):
            p.add_argument(*flags, **kwargs)
    return parser


_SHOW_WARNING = warnings.showwarning


def show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """synthtl's own warnings (e.g. "n below the feature dimension") as one "[synthtl] warning:" line, not Python's
    two-line form with a source line; other libraries' warnings as usual."""
    if issubclass(category, UserWarning) and "synthtl" in Path(filename).parts:
        print(f"[synthtl] warning: {message}", file=file or sys.stderr)
    else:
        _SHOW_WARNING(message, category, filename, lineno, file, line)


def matplotlib_home(env: dict) -> None:
    """Matplotlib keeps its font cache under $HOME: where $HOME is not writable, it goes to synthtl's cache (else a
    temporary folder), so that a read-only home costs no warning and no rebuild per plot."""
    home = Path(env.get("HOME") or "~").expanduser()
    if env.get("MPLCONFIGDIR") or os.access(home, os.W_OK):
        return
    for where in (cache_home(), Path(tempfile.gettempdir()) / f"synthtl-{os.getuid()}"):
        with contextlib.suppress(OSError):
            (where / "matplotlib").mkdir(parents=True, exist_ok=True)
            if os.access(where / "matplotlib", os.W_OK):
                env["MPLCONFIGDIR"] = str(where / "matplotlib")
                return


def main(argv: list[str] | None = None) -> int:
    warnings.showwarning = show_warning
    matplotlib_home(os.environ)
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    # `key=value` overrides may follow options (`synthtl filter SET -c filter/clip keep.fraction=0.8`): argparse has
    # filled the overrides list by then, so they arrive here; anything else unknown is an error as usual.
    unknown = [a for a in extra if "=" not in a or a.startswith("-")]
    if unknown or (extra and not hasattr(args, "overrides")):
        parser.error(f"unrecognized arguments: {' '.join(unknown or extra)}")
    if extra:
        args.overrides = [*(args.overrides or []), *extra]
    try:
        with stop_signals():
            return args.func(args)
    except SynthTLError as e:
        print(f"synthtl {args.command}: error: {e}", file=sys.stderr)
        if args.verbose and e.__cause__ is not None:  # e.g. PyTorch's reason for refusing a file
            traceback.print_exception(e.__cause__, file=sys.stderr)
        return 2
    except BrokenPipeError:  # `synthtl ... | head`: the reader left; nothing is wrong
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except OSError as e:
        # A path given by the user (an output folder inside a file, a folder we may not write, a read-only file
        # system): one line naming it. Other OS errors are bugs or hardware: their traceback helps.
        if not (isinstance(e, (NotADirectoryError, FileNotFoundError, PermissionError, IsADirectoryError))
                or e.errno == errno.EROFS):
            raise
        print(f"synthtl {args.command}: error: {e.filename or ''}: {e.strerror or e}; check the paths you gave "
              "(out_dir, --out, data.root, ...)", file=sys.stderr)
        return 2
    except KeyboardInterrupt as e:
        signum = e.signum if isinstance(e, Stopped) else signal.SIGINT
        print(f"synthtl {args.command}: interrupted ({signal.Signals(signum).name}); re-run the same command to "
              f"resume{requeue_slurm(signum)}", file=sys.stderr)
        return 128 + signum


if __name__ == "__main__":
    raise SystemExit(main())
