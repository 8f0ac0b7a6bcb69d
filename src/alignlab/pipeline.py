"""The pipeline: stage after stage over one run directory.

    runs/<name>/<id>/config.yaml        the frozen config (secrets redacted); ranks and resumes read only this
                     run_info.json      seed, library versions, git commits, host, first command line
                     attempts.jsonl     one line per invocation (resumes included)
                     inputs.json        fingerprints of the data files: a resumed run refuses changed data
                     <stage>/model/     the stage's policy (merged), input of the next stage
                     <stage>/metrics.json, <stage>/DONE
                     <stage>/members/<k>/  a soup stage's trainings (training/soup.py); model/ is their mean
                     summary.json       final metrics of every stage

`<id>` is a hash of the config (minus `run` and `logger`), so re-running the same command continues the same
run: finished stages (DONE) are skipped, an interrupted one resumes from its last complete checkpoint.
Everything a stage needs (model, tokenizer, every data row) is loaded and validated before the first step.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import platform
import socket
import subprocess
import sys
import time
import traceback
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from alignlab import data as data_lib
from alignlab import devices, distributed, launch, preemption, run_state
from alignlab.artifacts import atomic_write_json, atomic_write_text, is_done, mark_done
from alignlab.config import POLICY_KINDS, TRAINING_KINDS, validate
from alignlab.console import Console, quiet_libraries
from alignlab.data import mix, onpolicy
from alignlab.data.sources import fingerprint
from alignlab.errors import (
    ConfigError,
    DataError,
    Preempted,
    RunStateError,
    UserError,
    disk_full,
    internal_error,
    is_disk_full,
)
from alignlab.evaluation import report as run_report
from alignlab.models import cache_root, load_tokenizer, refusal_token_id, resolve_model_path
from alignlab.stages import STAGES, TRAINING_ARGS
from alignlab.tracking import Tracker, redact
from alignlab.training import saving, soup
from alignlab.training.context import StageContext

# stages that read data.preference (pairs, prompts)
PAIR_KINDS = {"dpo", "kto", "rm", "cm", "ppo", "ppo-lag", "grpo", "rloo"}
LIBRARIES = (
    "torch",
    "transformers",
    "trl",
    "peft",
    "accelerate",
    "datasets",
    "deepspeed",
    "wandb",
    "hydra-core",
    "omegaconf",
    "tokenizers",
)


def run_id(cfg: DictConfig) -> str:
    """`run.id`, or a hash of what decides the results: not where the run lives, how it logs, or its Slurm job
    settings, so a requeued job with a longer time limit resumes the same run."""
    if cfg.run.id:
        return str(cfg.run.id)
    body = {k: v for k, v in OmegaConf.to_container(cfg, resolve=True).items() if k not in ("run", "logger", "slurm")}
    body["launcher"] = {k: v for k, v in body["launcher"].items() if k != "master_port"}
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()[:10]


def run_dir_of(cfg: DictConfig) -> Path:
    return Path(cfg.run.root).expanduser() / cfg.name / run_id(cfg)


@dataclass
class Prepared:
    """Everything validated before any compute: the run folder, base model path, tokenizer and data rows."""

    cfg: DictConfig
    run_dir: Path
    base_model: str
    tokenizer: Any
    pairs: list[dict] | None = None
    sft_rows: list[dict] | None = None
    reports: list[data_lib.DataReport] = field(default_factory=list)
    fingerprints: dict[str, str] = field(default_factory=dict)
    pairs_from: str | None = None  # a stage of this run that writes the preference pairs (`stage:<name>`)


def set_offline(cfg: DictConfig) -> None:
    """`offline` true or false sets the Hub's environment variables for this process and its ranks; None leaves
    them as the user's environment has them."""
    for name in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"):
        if cfg.offline is True:
            os.environ[name] = "1"
        elif cfg.offline is False:
            os.environ.pop(name, None)


def prepare(cfg: DictConfig, run_dir: Path | None = None) -> Prepared:
    set_offline(cfg)
    run_dir = run_dir or run_dir_of(cfg)
    try:
        base = resolve_model_path(cfg.model, cache_root(cfg))
        tokenizer = load_tokenizer(base, cfg.model)
        refusal_token_id(tokenizer, cfg.model)  # a token the tokenizer lacks stops the run here
        check_model_fits_config(base, cfg.model)
        prep = Prepared(cfg, run_dir, base, tokenizer)
        kinds = {cfg.algo[s].kind for s in cfg.pipeline.stages}
        pref = cfg.data.preference
        if pref is not None and str(pref.path).startswith("stage:"):
            prep.pairs_from = str(pref.path).split(":", 1)[1]  # written during the run, validated when loaded
        elif pref is not None and (kinds & PAIR_KINDS or cfg.data.sft is None):
            prep.pairs, report = data_lib.load(pref, "preference", cfg.data, tokenizer)
            prep.reports.append(report)
            prep.fingerprints[str(pref.path)] = fingerprint(str(pref.path))
        for stage in (s for s in cfg.pipeline.stages if cfg.algo[s].kind == "cm" and prep.pairs is not None):
            data_lib.check_safety_labels(data_lib.labelled_pairs(prep.pairs), str(pref.path), stage)
        if "sft" in kinds and cfg.data.sft is not None:
            prep.sft_rows, report = data_lib.load(cfg.data.sft, "sft", cfg.data, tokenizer)
            prep.reports.append(report)
            prep.fingerprints[str(cfg.data.sft.path)] = fingerprint(str(cfg.data.sft.path))
        elif "sft" in kinds and prep.pairs is not None:
            prep.sft_rows = data_lib.as_sft(prep.pairs)
        if cfg.data.bias is not None:
            prep.fingerprints.update(mix.check_templates(cfg.data.bias))
        for stage in (s for s in cfg.pipeline.stages if cfg.algo[s].get("soup_select") is not None):
            path = str(cfg.algo[stage].soup_select)  # both kinds of prompt held out, checked before training
            written = is_done(run_dir / path.split(":", 1)[1])
            onpolicy.calibration_prompts(path, f"algo.{stage}.soup_select", cfg, run_dir if written else None)
        for stage in (s for s in cfg.pipeline.stages if cfg.algo[s].kind == "calibrate"):
            path = str(cfg.algo[stage].prompts)  # a pairs stage already done: what it wrote (resuming)
            written = path.startswith("stage:") and is_done(run_dir / path.split(":", 1)[1])
            rows = onpolicy.calibration_prompts(path, f"algo.{stage}.prompts", cfg, run_dir if written else None)
            if cfg.algo[stage].probe_gain > 0:
                onpolicy.readout_prompts(str(cfg.algo[stage].probe_prompts), f"algo.{stage}.probe_prompts", rows)
        _check_inputs_unchanged(run_dir, prep.fingerprints)
        check_training_args(prep)
    except UserError as exc:
        if run_dir.is_dir():  # an existing run keeps its files; only the error is added
            with open(run_dir / "error.log", "a", encoding="utf-8") as f:
                f.write(f"{time.strftime('%Y-%m-%dT%H:%M:%S')} {exc}\n")
        raise
    return prep


def check_training_args(prep: Prepared) -> None:
    """Every unfinished TRL stage's arguments, built now from the stage's settings (and thrown away), so a value TRL
    or transformers refuses (a scheduler, an optimizer, a combination) is reported before any stage trains."""
    for stage in prep.cfg.pipeline.stages:
        build = TRAINING_ARGS.get(prep.cfg.algo[stage].kind)
        stage_dir = prep.run_dir / stage
        if build is not None and not is_done(stage_dir):
            base = prep.base_model
            build(StageContext(prep.cfg, stage, stage_dir, base, base, prep.tokenizer, None, None, None, dry_run=True))


def check_model_fits_config(path: str, model_cfg: DictConfig) -> None:
    """Settings that depend on the model's architecture, checked against its config.json before any compute."""
    from transformers import AutoConfig

    top = model_cfg.lora.top_layers
    if not (model_cfg.lora.enabled and top is not None):
        return
    n_layers = getattr(AutoConfig.from_pretrained(path, revision=model_cfg.revision), "num_hidden_layers", None)
    if n_layers is not None and top > n_layers:
        raise ConfigError(
            f"Config error at 'model.lora.top_layers': {top} layers asked for, but '{path}' has {n_layers}."
        )


def load_stage_pairs(prep: Prepared, console: Any) -> None:
    if _nothing_to_correct(prep):
        prep.pairs, prep.sft_rows = [], []
        console.warning(
            f"the correction round '{prep.pairs_from}' found no mistake to train on: the DPO and KTO stages after it "
            "pass the policy on as it is."
        )
        return
    prep.pairs, report = data_lib.load_stage_pairs(prep.run_dir, str(prep.pairs_from), prep.cfg.data, prep.tokenizer)
    prep.reports.append(report)
    console.data_report(report)
    if prep.cfg.data.sft is None:
        written = prep.run_dir / str(prep.pairs_from) / "pairs.jsonl"
        prep.sft_rows = data_lib.as_sft(mix.sft_pairs(prep.cfg.data.bias, prep.pairs, written))
        openings = onpolicy.read_openings(prep.run_dir, str(prep.pairs_from), prep.cfg.algo, for_sft=True)
        prep.sft_rows += [{"prompt": o["prompt"], "opening": o["opening"]} for o in openings]  # stages/sft.py


def _nothing_to_correct(prep: Prepared) -> bool:
    """A correction round (`failures_only`) whose policy made no mistake writes an empty pairs file; any other
    empty pairs file is an error (data.load_stage_pairs)."""
    stage = str(prep.pairs_from)
    written = prep.run_dir / stage / "pairs.jsonl"
    return bool(prep.cfg.algo[stage].get("failures_only")) and written.is_file() and not written.read_text().strip()


def _pass_policy_on(ctx: StageContext) -> dict[str, Any]:
    """A DPO or KTO stage after a correction round that found no mistake keeps the policy it was given (rank 0
    writes it)."""
    if not distributed.is_main():
        return {}
    saving.pass_on(ctx)
    return {"pairs/trained": 0}


def _check_inputs_unchanged(run_dir: Path, fingerprints: dict[str, str]) -> None:
    recorded = run_dir / "inputs.json"
    if not recorded.is_file():
        return
    before = json.loads(recorded.read_text())
    changed = [p for p, fp in fingerprints.items() if before.get(p) not in (None, fp)]
    if changed:
        raise RunStateError(
            f"Run error: the data {', '.join(changed)} changed since run '{run_dir}' started, so its finished stages "
            "no longer match it. Restore the data, or start a separate run with run.id=<new name>."
        )


def _git_commit(where: Path) -> str | None:
    try:
        out = subprocess.run(["git", "-C", str(where), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5)
        dirty = subprocess.run(
            ["git", "-C", str(where), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=5,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    if out.returncode != 0:
        return None
    return out.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")


def _versions() -> dict[str, str | None]:
    found: dict[str, str | None] = {"python": platform.python_version()}
    for lib in LIBRARIES:
        try:
            found[lib] = metadata.version(lib)
        except metadata.PackageNotFoundError:
            found[lib] = None
    return found


def code_changed(run_dir: Path, stages: list[str], commit: str | None) -> str | None:
    """A warning when finished stages of `run_dir` were made by other code than `commit`, else None.

    The run id hashes the config, not the code: after a change to alignlab, the same command resumes the old run
    and reuses (and reports) what the old code made. Reusing it can be right (a fix to a later stage), so this
    warns rather than refuses, and says how to start afresh."""
    info = run_dir / "run_info.json"
    done = [s for s in stages if is_done(run_dir / s)]
    if not done or commit is None or not info.is_file():
        return None
    started = (json.loads(info.read_text()).get("git") or {}).get("alignlab")
    if started is None or started == commit:
        return None
    return (
        f"this run started with alignlab at commit {started}, and alignlab is now at {commit}: its finished "
        f"stages ({', '.join(done)}) are reused as the old code made them. To run them with this code, start a "
        "separate run (run.id=<new name> or run.root=<another folder>)."
    )


def record_run(prep: Prepared, commit: str | None = None) -> None:
    """Write the run's frozen config and run info (once) and append this invocation to attempts.jsonl, with the
    alignlab commit it ran (`commit`, looked up when not given)."""
    d = prep.run_dir
    d.mkdir(parents=True, exist_ok=True)
    commit = commit or _git_commit(Path(__file__).parent)
    run_state.record_config(d, OmegaConf.to_yaml(OmegaConf.create(snapshot(prep.cfg))))
    if not (d / "run_info.json").is_file():
        atomic_write_json(
            d / "run_info.json",
            {
                "seed": prep.cfg.seed,
                "versions": _versions(),
                "git": {"alignlab": commit, "cwd": _git_commit(Path.cwd())},
                "command": sys.argv,
                "host": socket.gethostname(),
                "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                "base_model": prep.base_model,
                "data": [r.summary() for r in prep.reports],
            },
        )
    if not (d / "inputs.json").is_file():  # what the run started from; later starts are checked against it
        atomic_write_json(d / "inputs.json", prep.fingerprints)
    with open(d / "attempts.jsonl", "a", encoding="utf-8") as f:
        done = [s for s in prep.cfg.pipeline.stages if is_done(d / s)]
        now = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        attempt = {"time": now, "command": sys.argv, "done_before": done, "git": commit}
        f.write(json.dumps(attempt) + "\n")


def snapshot(cfg: DictConfig) -> dict[str, Any]:
    """The config as the run folder records it: resolved, secrets redacted."""
    return redact(OmegaConf.to_container(cfg, resolve=True))


def finished(run_dir: Path, cfg: DictConfig) -> bool:
    """Whether every stage of the pipeline is done in `run_dir`."""
    return all(is_done(run_dir / stage) for stage in cfg.pipeline.stages)


def check_resources(run_dir: Path, cfg: DictConfig, force: bool, adopt: bool = True) -> None:
    """An unfinished run started with other slurm.* / launcher.* settings: these are not part of its id, so the same
    command names the same run, and its resumes read the frozen ones. Refused unless `force`, which moves the run
    to the new settings (with `adopt`, written into its frozen config); never silently half-applied."""
    changes = run_state.resource_changes(run_dir, snapshot(cfg))
    if not changes or finished(run_dir, cfg):
        return
    shown = "; ".join(f"{k}: {a!r} -> {b!r}" for k, a, b in changes[:5])
    more = f" and {len(changes) - 5} more" if len(changes) > 5 else ""
    done = [s for s in cfg.pipeline.stages if is_done(run_dir / s)]
    if not force:
        raise RunStateError(
            f"Run error: run '{run_dir}' exists, unfinished (done: {', '.join(done) or 'no stage yet'}), and was "
            f"started with other resources ({shown}{more}). slurm.* and launcher.* are not part of a run's id, so "
            "these settings name the same run. Choose: resume it as it was (`alignlab resume "
            f"{run_dir}`); continue it on the new resources with --force (its frozen config takes the new slurm.* "
            "and launcher.* settings; finished stages and checkpoints are kept); or start a separate run with "
            "run.id=<new name>."
        )
    if adopt:
        run_state.adopt_resources(run_dir, snapshot(cfg))
        print(f"[alignlab] note: run {run_dir} continues on new resources ({shown}{more}), as --force asked")


def freeze(cfg: DictConfig, force: bool = False) -> Prepared:
    """Validate everything and write the run directory (frozen config, run info) without training: what a Slurm
    submission does before `sbatch`, so the job reads the config composed here."""
    prep = prepare(cfg)
    run_state.check_same_config(prep.run_dir, snapshot(cfg))
    check_resources(prep.run_dir, cfg, force)
    with run_state.locked(prep.run_dir):
        record_run(prep)
    return prep


def load_frozen(run_dir: str | Path) -> DictConfig:
    """A run's frozen `config.yaml`, validated again (types and rules), never re-composed."""
    path = Path(run_dir) / "config.yaml"
    if not path.is_file():
        raise RunStateError(
            f"Run error: '{path}' does not exist; `alignlab resume` needs a run directory "
            "written by `alignlab run` or `alignlab slurm submit` (runs/<name>/<id>)."
        )
    run_state.check_frozen_unedited(Path(run_dir))
    try:
        cfg = OmegaConf.load(path)
    except Exception as exc:  # yaml and OmegaConf raise several types for a damaged file
        raise RunStateError(f"Run error: cannot read '{path}': {' '.join(str(exc).split())}") from None
    return validate(cfg)


def resume(run_dir: str | Path) -> dict[str, Any]:
    """Run or resume the run in `run_dir` from its frozen config."""
    return run(load_frozen(run_dir), run_dir=Path(run_dir))


def run(cfg: DictConfig, console: Any = None, run_dir: Path | None = None, force: bool = False) -> dict[str, Any]:
    """Run (or resume) the pipeline described by a validated config; returns per-stage metrics. With several ranks
    (launcher.nproc_per_node x launcher.nnodes) this process freezes the run and starts them (launch.py).
    `force`: an unfinished run started with other slurm.* / launcher.* settings continues with these."""
    console = console or Console()
    prep = prepare(cfg, run_dir)
    if run_dir is None:  # composed anew (`alignlab run`), not read from the run's own frozen file
        run_state.check_same_config(prep.run_dir, snapshot(cfg))
        check_resources(prep.run_dir, cfg, force)
    console.header(prep)
    commit = _git_commit(Path(__file__).parent)
    changed = code_changed(prep.run_dir, list(cfg.pipeline.stages), commit)
    if changed:
        console.warning(changed)
    with run_state.locked(prep.run_dir):
        record_run(prep, commit)
        if distributed.planned_world_size(cfg) > 1:
            launch.spawn(cfg, prep.run_dir)  # rank 0 prints the summary
            return json.loads((prep.run_dir / "summary.json").read_text())
        with preemption.handled():
            return execute(prep, console)


def execute(prep: Prepared, console: Any = None) -> dict[str, Any]:
    """The stages, in order, in this process: every stage in a one-process run; in a rank, the training stages
    (with all ranks), while the others run on rank 0 and the rest wait for their DONE marker."""
    cfg = prep.cfg
    main = distributed.is_main()
    devices.keep_freed_memory()  # every stage allocates and frees large tensors step after step
    quiet_libraries()
    console = console or Console(quiet=not main)
    # a run whose stages are all done only prints its summary again: it opens no new W&B run
    tracker = Tracker(cfg, prep.run_dir, enabled=not finished(prep.run_dir, cfg))
    results: dict[str, Any] = {}
    policy = prep.base_model
    comparison: dict[str, Any] = {}
    stage = None
    try:
        for stage in cfg.pipeline.stages:
            stage_dir = prep.run_dir / stage
            kind = cfg.algo[stage].kind
            if not main and not is_done(stage_dir) and kind not in TRAINING_KINDS:
                distributed.wait_for(stage_dir / "DONE", f"stage '{stage}'")
            if is_done(stage_dir):
                results[stage] = {**_finished_metrics(stage_dir), "status": "skipped (done)"}
                console.stage_skipped(stage)
            else:
                if kind in TRAINING_KINDS and prep.pairs_from and prep.pairs is None:
                    load_stage_pairs(prep, console)
                ctx = StageContext(
                    cfg,
                    stage,
                    stage_dir,
                    policy,
                    prep.base_model,
                    prep.tokenizer,
                    prep.pairs,
                    prep.sft_rows,
                    tracker,
                    pairs_from=prep.pairs_from,
                )
                stage_dir.mkdir(parents=True, exist_ok=True)
                console.stage_start(stage, kind)
                started, peak = time.time(), devices.PeakMemory()
                if prep.pairs == [] and kind in ("dpo", "kto"):
                    metrics = _pass_policy_on(ctx)
                elif prep.pairs == [] and kind in TRAINING_KINDS:
                    raise DataError(
                        f"Data error: stage '{stage}' ({kind}) trains on the pairs of the correction round "
                        f"'{prep.pairs_from}', which found no mistake; only a dpo or kto stage can follow it then."
                    )
                elif cfg.algo[stage].get("soup", 1) > 1:
                    metrics = soup.run(ctx, STAGES[kind])
                else:
                    metrics = STAGES[kind](ctx)
                metrics["wall_seconds"] = round(time.time() - started, 2)
                metrics.update(peak.metrics())
                devices.release_freed_memory()  # what this stage freed is not kept for the next one
                if main:
                    tracker.stage_result(stage, metrics, _phase(cfg, stage))
                    atomic_write_json(stage_dir / "metrics.json", metrics)
                    mark_done(stage_dir)
                else:  # the next stage reads what rank 0 writes last (model/, metrics.json, DONE)
                    distributed.wait_for(stage_dir / "DONE", f"saving stage '{stage}'")
                results[stage] = {**metrics, "status": "done"}
            if kind in POLICY_KINDS:  # evaluation, pair, reward and cost stages leave it as it was
                policy = str(stage_dir / "model")
            later = cfg.algo[stage].after if kind == "pairs" else None
            if later is not None and later == prep.pairs_from:  # a later round: its pairs from now on
                prep.pairs_from, prep.pairs = stage, None
        if main:
            comparison = _write_summary(prep, results, tracker)
    except BaseException as exc:
        tracker.finish(exit_code=1)
        reported = _reported(prep.run_dir, stage, exc)
        if reported is exc:
            raise
        raise reported from exc
    tracker.finish()
    console.summary(prep.run_dir, results)
    if comparison:
        console.comparison(comparison, prep.run_dir / "report.md")
        console.targets(run_report.check_targets(prep.cfg, results))
    return results


def _phase(cfg: DictConfig, stage: str) -> int | None:
    """An evaluation stage's place among the pipeline's evaluations (0: before training, 1: after), else None."""
    evals = [s for s in cfg.pipeline.stages if cfg.algo[s].kind == "eval"]
    return evals.index(stage) if stage in evals else None


def _finished_metrics(stage_dir: Path) -> dict[str, Any]:
    """A finished stage's metrics.json; damaged, it is named with the way to run that stage again."""
    path = stage_dir / "metrics.json"
    try:
        metrics = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        metrics = exc
    if not isinstance(metrics, dict):
        raise RunStateError(
            f"Run state error: stage '{stage_dir.name}' is marked done but {path} is unreadable or damaged "
            f"({' '.join(str(metrics).split())[:120]}). To run that stage again, delete {stage_dir / 'DONE'} "
            f"(later stages that used it too), then run the same command."
        )
    return metrics


def _reported(run_dir: Path, stage: str | None, exc: BaseException) -> BaseException:
    """What the console shows of a failure inside the stages; the traceback goes to the run's error.log.
    Preemption and interrupts pass through; a full disk and any unexpected error become one paragraph."""
    exc.during_run = True  # type: ignore[attr-defined]  # the CLI starts its paragraph on a new line
    if isinstance(exc, (Preempted, KeyboardInterrupt, SystemExit)):
        return exc
    # on a full disk even the log may not fit
    with contextlib.suppress(OSError), open(run_dir / "error.log", "a", encoding="utf-8") as f:
        f.write(f"{time.strftime('%Y-%m-%dT%H:%M:%S')} stage {stage}:\n{''.join(traceback.format_exception(exc))}\n")
    if isinstance(exc, UserError):
        return exc
    reported = disk_full(run_dir, stage) if is_disk_full(exc, run_dir) else internal_error(run_dir, stage, exc)
    reported.during_run = True  # type: ignore[attr-defined]
    return reported


def _write_summary(prep: Prepared, results: dict[str, Any], tracker: Tracker) -> dict[str, Any]:
    """summary.json, report.md and the W&B summary (rank 0); returns the before/after comparison."""
    cfg = prep.cfg
    summary = {f"{s}/{k}": v for s, m in results.items() for k, v in m.items() if isinstance(v, (int, float))}
    comparison = run_report.compare(cfg, results)
    evals = run_report.eval_stages(cfg)
    if evals:  # the last evaluation also under the stable names (safety/*, bias/*, eval/*)
        summary.update({k: v for k, v in results[evals[-1]].items() if k.startswith(("safety/", "bias/", "eval/"))})
    if comparison:
        summary.update({f"{k}/{when}": v for k, row in comparison.items() for when, v in row.items()})
        if targets := run_report.check_targets(cfg, results):  # how many goals met, for sweeps and W&B filters
            summary.update({"targets/met": sum(t["met"] is True for t in targets), "targets/total": len(targets)})
        atomic_write_text(prep.run_dir / "report.md", run_report.markdown(cfg, prep.run_dir, results, comparison))
    tracker.summary(summary)
    atomic_write_json(prep.run_dir / "summary.json", results)
    return comparison
