"""`alignlab slurm submit`: compose and freeze a run (or every member of a sweep) here, then submit one sbatch job.

    alignlab slurm submit experiment=X key=value ...      -> <run_dir>/job.sbatch, `sbatch --parsable` it
    alignlab slurm submit --dry-run ...                   -> print the script; write and submit nothing
    alignlab slurm submit -m key=a,b ...                  -> runs/sweeps/<name>/<time>/{members.txt, manifest.json,
                                                             job.sbatch}: one array job, task i = member i

The config is composed once, on the submitting machine (Hydra does not run in the job); the job only runs
`alignlab resume <run_dir>` on the frozen config.yaml, so a requeued or resubmitted job continues the same run.
The scripts come from the Jinja templates in slurm/ (packaged as alignlab/slurm_templates): single-node or
multi-node by launcher.nnodes, sweep-array for -m. The requeue/signal contract they implement: Slurm's SIGUSR1
(slurm.signal_seconds before the time limit) or SIGTERM makes alignlab checkpoint and exit 75 (Preempted), and the
script then requeues the job when slurm.requeue is true.
"""

from __future__ import annotations

import contextlib
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from jinja2 import Environment, FileSystemLoader, StrictUndefined
from omegaconf import DictConfig, OmegaConf

from alignlab.artifacts import atomic_write_json, atomic_write_text
from alignlab.errors import ConfigError, UserError
from alignlab.sweep import expand_sweep

TEMPLATES = Path(__file__).resolve().parent / "slurm_templates"
SCRIPT_NAME = "job.sbatch"


class SlurmError(UserError):
    """sbatch is missing or refused the job."""


# ------------------------------------------------------------------------------------------------ rendering
def _environment() -> Environment:
    env = Environment(
        loader=FileSystemLoader(TEMPLATES),
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
        autoescape=False,
    )
    env.filters["quote"] = lambda value: shlex.quote(str(value))
    return env


def default_alignlab() -> str:
    """The command a job runs when $ALIGNLAB is unset: this Python's alignlab, so the job does not depend on PATH."""
    return f"{sys.executable} -m alignlab.cli"


def submit_command(overrides: list[str], multirun: bool = False) -> str:
    """The command line that produces a script, for its header comment: copy-pasteable, and readable for Hydra's
    quoted values (`"slurm.mail_type='END,FAIL'"` rather than shlex's '"'"' chains)."""
    return " ".join(_shell_word(w) for w in ["alignlab", "slurm", "submit", *(["-m"] if multirun else []), *overrides])


def _shell_word(word: str) -> str:
    if "'" in word and not set('"$`\\!') & set(word):
        return f'"{word}"'
    return shlex.quote(word)


def _context(cfg: DictConfig, command: str, script: Path) -> dict[str, Any]:
    for i, option in enumerate(cfg.slurm.extra):
        if not str(option).startswith("-"):
            raise ConfigError(
                f"Config error at 'slurm.extra[{i}]': expected an sbatch option like "
                f'"--constraint=a100", got {option!r}.'
            )
    return {
        "slurm": cfg.slurm,
        "launcher": cfg.launcher,
        "job_name": cfg.slurm.job_name or f"alignlab-{cfg.name}",
        "command": command,
        "script": script,
        "alignlab": default_alignlab(),
        "chdir": Path.cwd(),
    }


def render(cfg: DictConfig, run_dir: Path, command: str) -> str:
    """The sbatch script of one run: single-node, or multi-node when launcher.nnodes > 1."""
    run_dir = run_dir.resolve()
    name = "multi-node.sbatch.j2" if cfg.launcher.nnodes > 1 else "single-node.sbatch.j2"
    context = _context(cfg, command, run_dir / SCRIPT_NAME)
    return _environment().get_template(name).render(**context, run_dir=run_dir)


def render_array(cfg: DictConfig, members_file: Path, members: list[Path], command: str) -> str:
    """The array script of a sweep whose run directories are `members`, written into the script itself, so that a
    dry run prints a complete one (and listed in `members_file` for people; its folder also takes the logs)."""
    members_file = members_file.resolve()
    context = _context(cfg, command, members_file.parent / SCRIPT_NAME)
    template = _environment().get_template("sweep-array.sbatch.j2")
    return template.render(**context, members_file=members_file, sweep_dir=members_file.parent, members=members)


# --------------------------------------------------------------------------------------------------- sweeps
def _compose(overrides: list[str]) -> DictConfig:
    from alignlab.config import compose_config, validate

    return validate(compose_config(overrides))


def _compose_members(members: list[list[str]], stamp: str) -> tuple[str, list[DictConfig]]:
    """Compose and validate every member; each gets logger.group = the sweep id (so W&B groups the sweep's runs)
    unless its config sets a group. Returns the sweep id and the configs."""
    from alignlab.config import compose_config, validate

    raw = [compose_config(m) for m in members]
    sweep_id = f"{raw[0].name}-sweep-{stamp}"  # as for `alignlab run -m` (sweep.py)
    for cfg in raw:
        if cfg.logger.group is None:
            cfg.logger.group = sweep_id
    return sweep_id, [validate(cfg) for cfg in raw]


def _check_same_job_shape(members: list[DictConfig], overrides: list[list[str]]) -> None:
    """One array job has one set of #SBATCH lines: members may not differ in `slurm` or `launcher`."""
    first = {k: OmegaConf.to_container(members[0][k]) for k in ("slurm", "launcher")}
    for cfg, member in zip(members[1:], overrides[1:]):
        for key, value in first.items():
            if OmegaConf.to_container(cfg[key]) != value:
                raise ConfigError(
                    f"Config error at '{key}': the sweep's members differ in it ({shlex.join(overrides[0])} vs "
                    f"{shlex.join(member)}), but one array job has one set of #SBATCH options: sweep it in "
                    "separate submissions."
                )


def _check_distinct(run_dirs: list[Path], overrides: list[list[str]]) -> None:
    """Two members in one run directory would train over each other (run ids ignore `run` and `logger`)."""
    seen: dict[Path, list[str]] = {}
    for run_dir, member in zip(run_dirs, overrides):
        if run_dir in seen:
            raise ConfigError(
                f"Config error: sweep members {shlex.join(seen[run_dir])} and {shlex.join(member)} resolve to the "
                f"same run directory {run_dir} (the run id hashes the config without run.* and logger.*); "
                "set run.id per member or sweep a key that changes the run."
            )
        seen[run_dir] = member


# --------------------------------------------------------------------------------------------------- submit
def require_sbatch(what: Path) -> None:
    """Before anything is written: a machine without Slurm gets one error and no run folder."""
    if shutil.which("sbatch") is None:
        raise SlurmError(
            f"Slurm error: `sbatch` is not on PATH, so {what} cannot be submitted from this machine (nothing was "
            "written). Run the command on a Slurm login node, or print the script with --dry-run."
        )


def sbatch(script: Path) -> str:
    """Submit a script; returns the job id. The script's own --chdir sets where the job runs."""
    require_sbatch(script)
    proc = subprocess.run(["sbatch", "--parsable", str(script)], capture_output=True, text=True)
    if proc.returncode != 0:
        raise SlurmError(
            f"Slurm error: sbatch refused {script} (exit code {proc.returncode}): "
            f"{' '.join(proc.stderr.split()) or '(no message)'}"
        )
    return proc.stdout.strip().split(";")[0]  # --parsable prints "<id>" or "<id>;<cluster>"


def submit(overrides: list[str], dry_run: bool = False, multirun: bool = False, force: bool = False) -> str | None:
    """`alignlab slurm submit`: returns the job id (None for a dry run). `force`: an unfinished run started with
    other slurm.* / launcher.* settings moves to these (pipeline.check_resources)."""
    if multirun:
        return _submit_sweep(overrides, dry_run)
    from alignlab import pipeline

    with contextlib.redirect_stdout(sys.stderr):  # library banners (DeepSpeed's) off stdout: dry runs print the script
        cfg = _compose(overrides)
    run_dir = pipeline.run_dir_of(cfg).resolve()
    text = render(cfg, run_dir, submit_command(overrides))  # first: a bad slurm.* value fails before any writing
    if pipeline.finished(run_dir, cfg):
        raise SlurmError(
            f"Slurm error: run {run_dir} has finished every stage, so the job would skip them all (slurm.* and "
            "launcher settings are not part of the run's id: the same settings name the same run). To run again "
            "on these resources, start a new run: add run.id=<new name>."
        )
    if dry_run:
        with contextlib.redirect_stdout(sys.stderr):
            pipeline.prepare(cfg)  # every check a submission makes (data, model, tokenizer); writes no run files
        pipeline.check_resources(run_dir, cfg, force, adopt=False)
        print(text, end="")
        return None
    require_sbatch(run_dir / SCRIPT_NAME)
    fresh = not run_dir.exists()
    pipeline.freeze(cfg, force)
    script = run_dir / SCRIPT_NAME
    atomic_write_text(script, text)
    try:
        job_id = sbatch(script)
    except SlurmError:
        if fresh:  # a submission that failed leaves no run folder it created
            shutil.rmtree(run_dir, ignore_errors=True)
        raise
    print(
        f"Submitted Slurm job {job_id}: run {run_dir}\n  log: {run_dir}/slurm-{job_id}.out\n"
        f"  follow: tail -f {run_dir}/slurm-{job_id}.out   status: squeue -j {job_id}"
    )
    return job_id


def _submit_sweep(overrides: list[str], dry_run: bool) -> str | None:
    """Every member is composed, validated and frozen before anything is submitted, so a bad member fails first."""
    from alignlab import pipeline

    members = expand_sweep(overrides)  # Hydra's basic sweeper, as for `alignlab run -m`
    stamp = time.strftime("%Y%m%d-%H%M%S")
    with contextlib.redirect_stdout(sys.stderr):  # as in `submit`
        group, cfgs = _compose_members(members, stamp)
    sweep_dir = (Path(cfgs[0].run.root).expanduser() / "sweeps" / cfgs[0].name / stamp).resolve()
    _check_same_job_shape(cfgs, members)
    _check_distinct([pipeline.run_dir_of(c).resolve() for c in cfgs], members)
    members_file = sweep_dir / "members.txt"
    member_dirs = [pipeline.run_dir_of(c).resolve() for c in cfgs]
    script = render_array(cfgs[0], members_file, member_dirs, submit_command(overrides, multirun=True))
    if dry_run:
        with contextlib.redirect_stdout(sys.stderr):
            for cfg in cfgs:
                pipeline.prepare(cfg)
        print(script, end="")
        print(f"# {len(cfgs)} members (would be written to {members_file}):", file=sys.stderr)
        for cfg in cfgs:
            print(f"#   {pipeline.run_dir_of(cfg).resolve()}", file=sys.stderr)
        return None
    require_sbatch(sweep_dir / SCRIPT_NAME)
    fresh = [not pipeline.run_dir_of(c).resolve().exists() for c in cfgs]
    run_dirs = [pipeline.freeze(cfg).run_dir.resolve() for cfg in cfgs]
    manifest = {
        "sweep": group,
        "command": submit_command(overrides, multirun=True),
        "job_id": None,
        "members": [{"overrides": m, "run_dir": str(d)} for m, d in zip(members, run_dirs)],
    }
    atomic_write_text(members_file, "".join(f"{d}\n" for d in run_dirs))
    atomic_write_json(sweep_dir / "manifest.json", manifest)
    atomic_write_text(sweep_dir / SCRIPT_NAME, script)
    try:
        job_id = sbatch(sweep_dir / SCRIPT_NAME)
    except SlurmError:  # nothing it created stays behind
        for run_dir, new in zip(run_dirs, fresh):
            if new:
                shutil.rmtree(run_dir, ignore_errors=True)
        shutil.rmtree(sweep_dir, ignore_errors=True)
        raise
    atomic_write_json(sweep_dir / "manifest.json", {**manifest, "job_id": job_id})
    print(
        f"Submitted Slurm array job {job_id} ({len(run_dirs)} members, W&B group {group}): sweep {sweep_dir}\n"
        f"  logs: {sweep_dir}/slurm-{job_id}_<task>.out (linked from each run directory)\n"
        f"  members: {members_file}   status: squeue -j {job_id}"
    )
    return job_id
