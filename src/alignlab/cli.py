"""The `alignlab` command.

    alignlab run [key=value ...]            compose conf/ with overrides, validate, run or resume the pipeline
    alignlab run --cfg job [key=value ...]  print the composed, validated config and exit
    alignlab run -m key=a,b [...]           a sweep (Hydra multirun): every member a full pipeline run, a manifest
    alignlab resume RUN_DIR                 run or resume a run from its frozen config.yaml (what Slurm jobs call)
    alignlab slurm submit [--dry-run] [key=value ...]
                                            freeze the run and submit it as a Slurm job (-m: a sweep array)
    alignlab eval model=A[,B...] [reference=R] [eval=GROUP] [key=value ...]
                                            evaluate checkpoints on the eval suites, print a comparison table
    alignlab rejudge RUN_DIR [key=value ...]
                                            re-judge a run's saved evaluation replies with eval.judge, no generation
    alignlab data check SOURCE [options]    read and validate a data source, print a summary
    alignlab report SOURCE... [--out DIR] [--interval ci95|std] [--metrics KEY ...] [--label KEY ...] [--archive DIR]
                                            ablation tables (Markdown, LaTeX, CSV) and plots: runs differing only
                                            in seed aggregated; SOURCE: a sweep dir, run dirs, wandb:<e>/<p>/<group>

User errors (config, data, paths) print one paragraph and exit 2, with no traceback. A run stopped by SIGUSR1 or
SIGTERM saves a checkpoint and exits 75 (re-run or requeue to resume).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import warnings
from pathlib import Path
from typing import Any

import alignlab
from alignlab.errors import ConfigError, InternalError, Preempted, UserError

MULTIRUN_FLAGS = ("-m", "--multirun")


def _run(args: argparse.Namespace) -> int:
    from omegaconf import OmegaConf

    from alignlab.config import compose_config, validate
    from alignlab.config.user import primary_folder
    from alignlab.tracking import redact

    primary = primary_folder(args.config_dir, args.config_name)
    overrides = _with_user_configs(args, primary)
    if args.multirun and (args.cfg or args.info or args.force or args.config_name != "config"):
        raise ConfigError("Config error: --cfg, --info, --force and --config-name are for one run; drop -m.")
    if args.multirun:
        from alignlab import sweep

        sweep.multirun(overrides)
        return 0
    if args.info or args.cfg in ("hydra", "all"):
        full = compose_config(overrides, args.config_name, with_hydra=True, primary_dir=primary)
        if args.info:
            _print_info(full)
        else:
            shown = full.hydra if args.cfg == "hydra" else full
            print(OmegaConf.to_yaml(OmegaConf.create(redact(OmegaConf.to_container(shown)))), end="")
        return 0
    cfg = validate(compose_config(overrides, args.config_name, primary_dir=primary))
    if args.cfg:
        print(OmegaConf.to_yaml(OmegaConf.create(redact(OmegaConf.to_container(cfg)))), end="")
        return 0
    from alignlab import pipeline

    pipeline.run(cfg, force=args.force)
    return 0


def _with_user_configs(args: argparse.Namespace, primary: Any = None) -> list[str]:
    """The overrides, after those naming the user's config folders and file (config/user.py)."""
    from alignlab.config.user import user_overrides
    from alignlab.models import cache_root

    return [*user_overrides(args.config_dir, args.config, cache_root(), primary), *args.overrides]


def _print_info(cfg: Any) -> None:
    """Hydra's --info, the parts a user needs: where configs are searched, and which option each group took."""
    print("Config search path (first match wins):")
    for source in cfg.hydra.runtime.config_sources:
        if source.path:
            print(f"  {source.provider}: {source.path}")
    print("Groups (option chosen):")
    for group, choice in sorted(cfg.hydra.runtime.choices.items()):
        if not group.startswith("hydra/"):
            print(f"  {group}: {choice}")


def _resume(args: argparse.Namespace) -> int:
    from alignlab import pipeline

    pipeline.resume(args.run_dir)
    return 0


def _slurm_submit(args: argparse.Namespace) -> int:
    from alignlab import slurm

    if args.multirun and args.force:
        raise ConfigError("Config error: --force is for one run; drop -m.")
    slurm.submit(_with_user_configs(args), dry_run=args.dry_run, multirun=args.multirun, force=args.force)
    return 0


def _eval(args: argparse.Namespace) -> int:
    from alignlab.eval_command import evaluate_models

    evaluate_models(args.overrides)
    return 0


def _rejudge(args: argparse.Namespace) -> int:
    from alignlab.rejudge import rejudge

    rejudge(args.run_dir, args.overrides)
    return 0


def _report(args: argparse.Namespace) -> int:
    from alignlab.report import make_report

    make_report(
        args.sources,
        out=args.out,
        interval=args.interval,
        metrics=args.metrics,
        archive_to=args.archive,
        label=args.label,
    )
    return 0


def _mapping(text: str) -> tuple[str, str]:
    want, sep, have = text.partition("=")
    if not (sep and want.strip() and have.strip()):
        raise ConfigError(f"Config error at '--column {text}': write EXPECTED=FILES, e.g. --column prompt=question.")
    return want.strip(), have.strip()


def _data_check(args: argparse.Namespace) -> int:
    from omegaconf import OmegaConf

    from alignlab import data as data_lib
    from alignlab.config import DataConfig, SourceConfig
    from alignlab.models import load_tokenizer

    source = OmegaConf.structured(
        SourceConfig(
            path=args.source,
            format=args.format,
            split=args.split,
            pku_choose_by=args.pku_choose_by,
            columns=dict(_mapping(c) for c in args.column),
        )
    )
    data_cfg = OmegaConf.structured(
        DataConfig(
            name="check", max_length=args.max_length, on_overlength=args.on_overlength, on_duplicate=args.on_duplicate
        )
    )
    tokenizer = None
    if args.tokenizer:
        tokenizer = load_tokenizer(
            args.tokenizer, OmegaConf.create({"revision": None, "trust_remote_code": False, "chat_template": None})
        )
    _, report = data_lib.load(source, args.kind, data_cfg, tokenizer)
    summary = report.summary()
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        for k, v in summary.items():
            print(f"{k:>18}: {v}")
        print("OK: no malformed rows.")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="alignlab", description="Preference alignment: SFT -> DPO on TRL.")
    parser.add_argument("--version", action="version", version=f"alignlab {alignlab.__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    for add in (_add_run, _add_resume, _add_slurm, _add_eval, _add_rejudge, _add_report, _add_data):
        add(sub)
    return parser


FORCE_HELP = (
    "an unfinished run started with other slurm.* / launcher.* settings continues with these (without it: refused)"
)


def _add_run(sub: argparse._SubParsersAction) -> None:
    run = sub.add_parser(
        "run",
        help="run (or resume) a pipeline",
        description="Overrides are Hydra syntax: experiment=tiny algo.dpo.beta=0.3 model.lora.enabled=true ...",
    )
    run.add_argument(
        "--cfg",
        choices=["job", "hydra", "all"],
        help="print the config and exit: job (composed and validated), hydra (Hydra's own node), all (both)",
    )
    run.add_argument("--info", action="store_true", help="print where configs are searched and each group's option")
    run.add_argument("-m", "--multirun", action="store_true", help="a sweep: comma lists, ranges, hydra/sweeper=...")
    run.add_argument("--force", action="store_true", help=FORCE_HELP)
    _add_config_sources(run)
    run.add_argument("overrides", nargs="*", help="Hydra overrides key=value")
    run.set_defaults(func=_run)


def _add_config_sources(parser: argparse.ArgumentParser, primary: bool = True) -> None:
    parser.add_argument(
        "-cd",
        "--config-dir",
        action="append",
        default=[],
        metavar="DIR",
        help="your own config folder, laid out like conf/ (DIR/experiment/mine.yaml: experiment=mine); repeatable",
    )
    parser.add_argument("--config", metavar="FILE", help="your own experiment file (YAML), wherever it is")
    if primary:
        parser.add_argument(
            "-cn", "--config-name", default="config", metavar="NAME", help="the primary config (default: config)"
        )


def _add_resume(sub: argparse._SubParsersAction) -> None:
    resume = sub.add_parser(
        "resume",
        help="run or resume a run from its frozen config",
        description="Reads RUN_DIR/config.yaml (no composition): finished stages are skipped, an interrupted one "
        "continues from its last complete checkpoint, in the same W&B run.",
    )
    resume.add_argument("run_dir", help="runs/<name>/<id>")
    resume.set_defaults(func=_resume)


def _add_slurm(sub: argparse._SubParsersAction) -> None:
    slurm = sub.add_parser("slurm", help="Slurm jobs")
    slurm_sub = slurm.add_subparsers(dest="slurm_command", required=True)
    submit = slurm_sub.add_parser(
        "submit",
        help="freeze a run (or a sweep) and submit it with sbatch",
        description="Composes the config once, freezes it into the run directory, renders the sbatch script from "
        "slurm.* and launcher.* (templates in slurm/) and submits it. -m: one array job over the sweep's members.",
    )
    submit.add_argument("--dry-run", action="store_true", help="print the sbatch script instead of submitting it")
    submit.add_argument("-m", "--multirun", action="store_true", help="a sweep as one Slurm array job")
    submit.add_argument("--force", action="store_true", help=FORCE_HELP)
    submit.add_argument("overrides", nargs="*", help="Hydra overrides key=value")
    _add_config_sources(submit, primary=False)
    submit.set_defaults(func=_slurm_submit)


def _add_eval(sub: argparse._SubParsersAction) -> None:
    ev = sub.add_parser(
        "eval",
        help="evaluate one or more models on the eval suites",
        description="model=<model/ option, model folder (merged or LoRA checkpoint) or Hub id>[,...]; "
        "reference=<same> for KL and implicit rewards; eval=<group>; any other Hydra override.",
    )
    ev.add_argument("overrides", nargs="*", help="model=... reference=... eval=... and Hydra overrides key=value")
    ev.set_defaults(func=_eval)


def _add_rejudge(sub: argparse._SubParsersAction) -> None:
    rj = sub.add_parser(
        "rejudge",
        help="re-judge a finished run's evaluation replies with another judge",
        description="Reads <stage>/generations.jsonl of each evaluation stage and writes <stage>/rejudged/<judge>.json "
        "and .generations.jsonl; the judge is eval.judge of the default experiment plus the overrides.",
    )
    rj.add_argument("run_dir", type=Path, help="a run folder (<run.root>/<name>/<id>)")
    rj.add_argument("overrides", nargs="*", help="e.g. eval.judge=rules or eval.judges.probe.labels=[my.jsonl]")
    rj.set_defaults(func=_rejudge)


def _add_report(sub: argparse._SubParsersAction) -> None:
    report = sub.add_parser(
        "report",
        help="ablation tables and plots from a sweep, run folders or a W&B group",
        description="Runs that differ only in seed form a group: per metric the mean over seeds and a 95% CI "
        "(Student's t) or the std. Writes table.md, table.tex, runs.csv, plots and README.md into --out.",
    )
    report.add_argument(
        "sources",
        nargs="+",
        metavar="SOURCE",
        help="a sweep folder (manifest.json), run folders, a folder of runs, or wandb:<entity>/<project>/<group>",
    )
    report.add_argument("--out", type=Path, help="output folder (default: <sweep dir>/report, else ./report)")
    report.add_argument("--interval", choices=["ci95", "std"], default="ci95", help="the ± of each cell")
    report.add_argument(
        "--metrics",
        nargs="+",
        metavar="KEY",
        help="the columns (default: safety, bias, KL, DPO reward accuracy where present); after the sources",
    )
    report.add_argument(
        "--label",
        nargs="+",
        metavar="KEY",
        help="the settings that name the table's rows, e.g. algo.dpo.loss_type algo.dpo.beta (default: a few that "
        "tell the groups apart)",
    )
    report.add_argument(
        "--archive",
        type=Path,
        metavar="DIR",
        help="copy the runs' records (config.yaml, summary.json, log histories; no models) to DIR, read by "
        "`alignlab report DIR`",
    )
    report.set_defaults(func=_report)


def _add_data(sub: argparse._SubParsersAction) -> None:
    data = sub.add_parser("data", help="data tools")
    data_sub = data.add_subparsers(dest="data_command", required=True)
    check = data_sub.add_parser("check", help="validate a data source and print a summary")
    check.add_argument("source", help="file, folder or Hub id")
    check.add_argument("--kind", choices=["preference", "sft"], default="preference")
    check.add_argument("--format", default="auto")
    check.add_argument("--split", default="train")
    check.add_argument("--pku-choose-by", choices=["better", "safer"], default="better")
    check.add_argument("--tokenizer", help="model folder whose tokenizer and chat template measure lengths")
    check.add_argument("--max-length", type=int, default=1024)
    check.add_argument("--on-overlength", choices=["truncate", "drop", "error"], default="truncate")
    check.add_argument("--on-duplicate", choices=["drop", "keep", "error"], default="drop")
    check.add_argument(
        "--column",
        action="append",
        default=[],
        metavar="EXPECTED=FILES",
        help="read the file's column FILES as EXPECTED (repeatable), e.g. --column prompt=question",
    )
    check.add_argument("--json", action="store_true", help="print the summary as JSON")
    check.set_defaults(func=_data_check)


def quiet_accelerator_notice() -> None:
    """On a machine without CUDA, tell DeepSpeed it is the CPU before anything imports it: its autodetection
    otherwise prints "Setting accelerator to CPU" to stdout in every process (launcher and ranks inherit this)."""
    if "DS_ACCELERATOR" not in os.environ:
        import torch

        if not torch.cuda.is_available():
            os.environ["DS_ACCELERATOR"] = "cpu"


def main(argv: list[str] | None = None) -> Any:
    # Library deprecation notices are for us (the pinned stack is tested), not for the researcher's terminal.
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    args = build_parser().parse_args(argv)
    quiet_accelerator_notice()
    try:
        return args.func(args)
    except (UserError, Preempted, InternalError) as exc:
        # raised inside a stage, a progress bar may have left the line open: the paragraph starts on its own line
        opening = "\n" if getattr(exc, "during_run", False) else ""
        print(f"{opening}alignlab: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("alignlab: interrupted; re-run the same command to resume.", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
