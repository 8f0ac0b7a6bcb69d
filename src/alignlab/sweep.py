"""Sweeps: `alignlab run -m ...` is a Hydra multirun whose every member is a full pipeline run.

    alignlab run -m experiment=tiny algo.dpo.beta=0.05,0.1,0.3 seed=1,2            basic sweeper: the grid, in turn
    alignlab run -m ... hydra/launcher=submitit_local                              members as local processes
    alignlab run -m ... hydra/launcher=slurm slurm.partition=gpu slurm.time=08:00:00    one Slurm job per member
    alignlab run -m ... hydra/sweeper=optuna hydra.sweeper.n_trials=20 hydra.sweeper.direction=minimize
                    'algo.dpo.beta=interval(0.01,0.5)' sweep.objective=dpo/train_loss

    <run.root>/sweeps/<name>/<YYYYmmdd-HHMMSS>/manifest.json   the sweep: command, sweeper, launcher, W&B group,
                                              members/<num>.json  and per member its overrides, run dir, status,
                                              <num>/alignlab.log  objective value and wall seconds
    <run.root>/<name>/<id>/                   each member's run, exactly as `alignlab run` would make it

Hydra's own machinery does the work: `multirun` enters `initialize_config_dir` over conf/ and calls
`Hydra.multirun` with a task callable and the override list, the call `hydra.main` makes after parsing argv. We use
it rather than a `hydra.main`-decorated function fed a forged `sys.argv`, because `hydra.main` reports any
exception itself and calls `sys.exit(1)`: here our ConfigError reaches the CLI (one paragraph, exit 2), and the
manifest is assembled even when a member or the launcher fails. The sweepers (basic, optuna), the launchers (basic,
submitit_local, slurm) and the sweep syntax (`a,b`, `range()`, `choice()`, `interval()`) are Hydra's and its
plugins', unchanged. A user-set `hydra.sweep.dir` is kept.

Before any member runs, every member config of a basic sweep is composed and validated (an optuna sweep: the first
point of its search space), so a bad value in member 7 fails before member 1 trains; two members that would share
a run directory (they differ only in run.*, logger.* or slurm.* keys, which are not part of the run id) are refused.

Settings of the sweep itself, not of any run, are `sweep.*` arguments that `multirun` takes out of the overrides:
    sweep.objective=<stage>/<metric>   the value each member returns, a key of that stage's metrics.json, e.g.
                                       dpo/train_loss or eval_after/safety/harmful_content_rate/harmbench; required by
                                       optuna, whose direction is hydra.sweeper.direction.
They are not alignlab config keys (so they change no run id) and not keys of `hydra.sweeper` (the optuna sweeper's
config is a typed dataclass that rejects unknown keys); the member task carries them to wherever members run.

Members are `done`, `failed` (the error, and for a bug the traceback, are in the manifest), `interrupted` (a
signal: it resumes when re-run or requeued) or `missing` (no record: never launched, or its job was killed before
it could write one). A failed member does not stop the others; `multirun` then raises SweepFailed (exit 1). With
the basic launcher a signal (SIGTERM, or Slurm's SIGUSR1 when the sweep itself runs in an sbatch job) stops the
whole sweep once the running member saved a checkpoint (exit 75); the same command again starts a new sweep folder
whose members find their run directories (run ids are config hashes): finished stages are skipped, the
interrupted one resumes.

W&B: every member logs to the group `<name>-sweep-<timestamp>` (the sweep id) unless its config sets logger.group.

Slurm (`hydra/launcher=slurm`, conf/hydra/launcher/slurm.yaml): hydra-submitit-launcher submits one job array from
this process and waits; resources come from the base config's `slurm.*` and `launcher.*`. Each member runs in its
own job, writes `members/<num>.json` when it ends (also when it fails), and this process assembles manifest.json
from those files when the multirun returns. Requeue: `slurm.signal_seconds` before the time limit Slurm sends
submitit's signal (USR2, #SBATCH --signal), whose handler requeues the member's job (at most three times for time
limits, never with slurm.requeue=false) and exits at once, so the work since the last checkpoint is redone; a
preemption that Slurm requeues itself (SIGTERM first) stops the member at a checkpoint through the pipeline's own
handler. Either way the requeued member composes the same config, finds the same run directory and resumes from
its last complete checkpoint. A member with launcher.nproc_per_node > 1 is still one Slurm task (on one node); the
pipeline starts its ranks inside it.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import os
import socket
import sys
import time
import traceback
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import hydra as hydra_package
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import Override
from hydra.errors import HydraException
from omegaconf import DictConfig, ListConfig, OmegaConf, read_write

from alignlab.artifacts import atomic_write_json
from alignlab.config import CONF_DIR, compose_config, validate
from alignlab.errors import ConfigError, Preempted, UserError

BASIC_SWEEPER = "basic"
MANIFEST = "manifest.json"
MEMBERS = "members"
OPTIONS = ("objective",)  # the sweep.* arguments
# A member's status: done, failed, interrupted (a signal: it resumes when re-run or requeued), missing (no record of
# it: never launched, or its job was killed before it could write one), not run (yet, while the sweep runs).
FAILED = ("failed", "interrupted")
# hydra/output/default.yaml's sweep dir; any other value was set by the user (command line or a config file)
HYDRA_DEFAULT_SWEEP_DIR = OmegaConf.to_container(
    OmegaConf.load(Path(hydra_package.__file__).parent / "conf/hydra/output/default.yaml")
)["sweep"]["dir"]
TIMEOUT_REQUEUES = 3  # submitit's max_num_timeout with slurm.requeue=true


class StopSweep(BaseException):
    """A member's Preempted, carried past Hydra's `except Exception` around each member. With the basic launcher
    every member runs in this process, and a signal (SIGTERM, Slurm's SIGUSR1) must stop the sweep, not only the
    member: Hydra would otherwise start the next member in a job about to end."""

    def __init__(self, preempted: Preempted) -> None:
        super().__init__(str(preempted))
        self.preempted = preempted


class SweepFailed(UserError):
    """Some members failed (each one's error is in the manifest and the summary table); the others finished."""

    exit_code = 1


# ------------------------------------------------------------------------------------------ resolvers
def _minutes(time_limit: str) -> int:
    """Slurm's time limit in whole minutes, rounded up (submitit's `timeout_min`). Slurm reads "M", "M:S" and
    "H:M:S", and with days "D-H", "D-H:M" and "D-H:M:S"."""
    days, dash, clock = str(time_limit).rpartition("-")
    parts = [int(p) for p in clock.split(":")]
    if dash:
        hours, minutes, seconds = [*parts, 0, 0][:3]
    elif len(parts) == 3:
        hours, minutes, seconds = parts
    else:
        hours, (minutes, seconds) = 0, [*parts, 0][:2]
    return int(days or 0) * 1440 + hours * 60 + minutes + math.ceil(seconds / 60)


def _task_cpus(cpus_per_rank: int | None, ranks: int) -> int | None:
    """slurm.cpus_per_task counts per rank; a sweep member is one Slurm task holding all its ranks."""
    return None if cpus_per_rank is None else int(cpus_per_rank) * int(ranks)


def _default(value: Any, fallback: Any) -> Any:
    """`value` unless it is null (oc.select only falls back for missing keys)."""
    return fallback if value is None else value


def _timeout_requeues(requeue: bool) -> int:
    """submitit's `max_num_timeout`: how often a member that reaches its time limit is requeued."""
    return TIMEOUT_REQUEUES if requeue else 0


def _sbatch_options(slurm: DictConfig | None) -> dict[str, Any]:
    """submitit's `additional_parameters`: slurm.mem, mail_user, mail_type and each `--option[=value]` of
    slurm.extra. Unset ones are left out (submitit would write `--mem=None`). `slurm` is None while Hydra merges the
    launcher group, before the main config exists; the interpolation is resolved again once it does."""
    if slurm is None:
        return {}
    options: dict[str, Any] = {k: slurm[k] for k in ("mem", "mail_user", "mail_type") if slurm[k] is not None}
    for line in slurm.extra:
        key, sep, value = str(line).lstrip("-").partition("=")
        options[key] = value if sep else True
    return options


for _name, _fn in {
    "minutes": _minutes,
    "task_cpus": _task_cpus,
    "default": _default,
    "timeout_requeues": _timeout_requeues,
    "sbatch_options": _sbatch_options,
}.items():
    OmegaConf.register_new_resolver(f"alignlab.{_name}", _fn, replace=True)


# ------------------------------------------------------------------------------------------ the task
@dataclass(frozen=True)
class MemberTask:
    """Hydra's task function for one member: validate, run the pipeline, record the member, return the objective.

    A picklable object (not a closure) because hydra-submitit-launcher pickles it into each member's Slurm job.
    """

    sweep_id: str
    group: str
    objective: str | None = None

    def __call__(self, cfg: DictConfig) -> float | None:
        hydra = HydraConfig.get()
        num = int(hydra.job.num)
        entry: dict[str, Any] = {
            "sweep_id": self.sweep_id,
            "num": num,
            "overrides": list(hydra.overrides.task),
            "run_dir": None,
            "status": "running",
            "error": None,
            "objective_value": None,
            "host": socket.gethostname(),
            "slurm_job_id": os.environ.get("SLURM_JOB_ID"),
            "started": _now(),
        }
        started = time.time()
        log = Path(hydra.runtime.output_dir) / f"{hydra.job.name}.log"
        # Hydra's member log holds only `logging` records; the run speaks through print, and its errors too
        with _teed(log):
            try:
                return self._run(cfg, entry)
            except BaseException as exc:
                # A signal (Preempted), Ctrl-C, or submitit's requeue (SystemExit): the member resumes when re-run
                interrupted = isinstance(exc, (Preempted, SystemExit, KeyboardInterrupt))
                entry.update(status="interrupted" if interrupted else "failed", error=_describe(exc))
                if not interrupted and not isinstance(exc, UserError):  # a bug: keep its traceback
                    entry["traceback"] = traceback.format_exc()
                    traceback.print_exc()
                else:
                    print(f"alignlab: {exc}", file=sys.stderr)
                if isinstance(exc, Preempted) and hydra.runtime.choices.get("hydra/launcher") == "basic":
                    raise StopSweep(exc) from exc
                raise
            finally:
                entry.update(wall_seconds=round(time.time() - started, 2), ended=_now())
                atomic_write_json(Path(hydra.sweep.dir) / MEMBERS / f"{num}.json", entry)

    def _run(self, cfg: DictConfig, entry: dict[str, Any]) -> float | None:
        from alignlab import pipeline

        if cfg.logger.group is None:  # one W&B group per sweep, unless the member's config names one
            with read_write(cfg):
                cfg.logger.group = self.group
        valid = validate(cfg)
        entry["run_dir"] = str(pipeline.run_dir_of(valid))
        results = pipeline.run(valid)
        value = objective_value(results, self.objective) if self.objective else None
        entry.update(status="done", objective_value=value)
        return value


class _Tee(io.TextIOBase):
    """Writes to the terminal's stream and to a member's log file alike; the terminal's answers isatty()."""

    def __init__(self, stream: Any, log: Any) -> None:
        self.stream, self.log = stream, log

    def write(self, text: str) -> int:
        self.stream.write(text)
        self.log.write(text)
        return len(text)

    def flush(self) -> None:
        self.stream.flush()
        self.log.flush()

    def isatty(self) -> bool:
        return self.stream.isatty()

    def fileno(self) -> int:
        return self.stream.fileno()

    @property
    def encoding(self) -> str:  # type: ignore[override]
        return getattr(self.stream, "encoding", "utf-8")


@contextlib.contextmanager
def _teed(path: Path) -> Iterator[None]:
    """stdout and stderr also into `path` (appended) for the block: each member's own log (`<num>/alignlab.log`)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a", encoding="utf-8") as log:
        out, err = sys.stdout, sys.stderr
        sys.stdout, sys.stderr = _Tee(out, log), _Tee(err, log)
        try:
            yield
        finally:
            sys.stdout, sys.stderr = out, err


def objective_value(results: dict[str, Any], objective: str) -> float:
    """`<stage>/<metric>` from the per-stage metrics `pipeline.run` returns (the run's summary.json)."""
    stage, _, metric = objective.partition("/")
    metrics = results.get(stage, {})
    value = metrics.get(metric)
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        numeric = sorted(k for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool))
        raise ConfigError(
            f"Config error at 'sweep.objective': stage '{stage}' reported no numeric metric '{metric}' "
            f"(it has: {', '.join(numeric) or 'nothing'})."
        )
    return float(value)


# ------------------------------------------------------------------------------------------ planning
@dataclass
class SweepPlan:
    """A sweep checked before anything runs: where it writes, its members as far as they are known beforehand."""

    sweep_id: str
    sweep_dir: Path
    group: str
    sweeper: str
    launcher: str
    objective: str | None
    direction: str | None
    arguments: list[str]  # as given, sweep.* arguments included
    overrides: list[str]  # the Hydra overrides among them
    members: list[list[str]]  # basic: every member's overrides; other sweepers: the first point only
    expected: int | None  # how many members will run (None: the sweeper decides as it goes, e.g. optuna)
    hydra_overrides: list[str] = field(default_factory=list)  # what multirun adds (the sweep dir)


def plan(overrides: list[str]) -> SweepPlan:
    """Parse, expand and validate a sweep; raises ConfigError (nothing created) if any member is invalid."""
    arguments = list(overrides)
    options, overrides = _take_options(overrides)
    objective = options.get("objective")
    parsed = _parse(overrides)
    first = [_first_point(o) for o in parsed]
    base = _member_config(first, "sweep member 0", parsed)  # its errors read best before Hydra's own
    hydra = _compose_hydra(first).hydra
    params = [f"{k}={v}" for k, v in (hydra.sweeper.get("params") or {}).items()]
    if params:  # search spaces given in a config file (hydra.sweeper.params), placed first as the sweepers do
        parsed = _parse(params) + parsed
    choices = hydra.runtime.choices
    sweeper, launcher = str(choices.get("hydra/sweeper")), str(choices.get("hydra/launcher"))
    if sweeper == BASIC_SWEEPER:
        members = _split(parsed)
        expected: int | None = len(members)
    else:
        members, expected = [[_first_point(o) for o in parsed]], None
        if objective is None:
            raise ConfigError(
                f"Config error at 'sweep.objective': the {sweeper} sweeper optimizes a metric: name it with "
                "sweep.objective=<stage>/<metric> (a key of that stage's metrics.json, e.g. dpo/train_loss or "
                "eval_after/safety/harmful_content_rate/harmbench), and hydra.sweeper.direction=minimize|maximize."
            )
    _validate_members(members, parsed, objective, launcher)

    stamp = time.strftime("%Y%m%d-%H%M%S")
    if OmegaConf.to_container(hydra.sweep, resolve=False)["dir"] == HYDRA_DEFAULT_SWEEP_DIR:
        sweep_dir = _unused(Path(base.run.root).expanduser() / "sweeps" / base.name / stamp)
        stamp = sweep_dir.name
    else:  # the user's (command line or a config file), resolved once so that every member agrees on it
        sweep_dir = Path(str(hydra.sweep.dir))
    sweep_id = f"{base.name}-sweep-{stamp}"
    return SweepPlan(
        sweep_id=sweep_id,
        sweep_dir=sweep_dir,
        group=base.logger.group or sweep_id,
        sweeper=sweeper,
        launcher=launcher,
        objective=objective,
        direction=_direction(hydra.sweeper) if objective else None,
        arguments=arguments,
        overrides=overrides,
        members=members,
        expected=expected,
        hydra_overrides=[f"hydra.sweep.dir={_quote(str(sweep_dir))}"],
    )


def _take_options(overrides: list[str]) -> tuple[dict[str, str], list[str]]:
    options, rest = {}, []
    for item in overrides:
        key, sep, value = item.lstrip("+").partition("=")
        if not key.startswith("sweep."):
            rest.append(item)
            continue
        name = key.removeprefix("sweep.")
        if name not in OPTIONS or not sep or not value:
            raise ConfigError(
                f"Config error: '{item}': sweep arguments are {', '.join(f'sweep.{o}=VALUE' for o in OPTIONS)}."
            )
        options[name] = value
    return options, rest


def expand_sweep(overrides: list[str]) -> list[list[str]]:
    """The override lists of a basic sweep's members, as Hydra's basic sweeper expands them (`a=1,2 b=range(2)`:
    4); also what `alignlab slurm submit -m` puts in one array job."""
    return _split(_parse(overrides))


def _split(parsed: list[Override]) -> list[list[str]]:
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper

    try:
        return BasicSweeper.split_arguments(parsed, max_batch_size=None)[0]
    except HydraException as exc:
        raise ConfigError(
            f"Config error: {exc} (the basic sweeper takes comma lists, range() and choice(); "
            "interval() needs hydra/sweeper=optuna)."
        ) from None


def _parse(overrides: list[str]) -> list[Override]:
    try:
        return OverridesParser.create().parse_overrides(overrides)
    except HydraException as exc:
        raise ConfigError(f"Config error: cannot parse the overrides: {' '.join(str(exc).split())}") from None


def _first_point(override: Override) -> str:
    """A plain override at the first value of a sweep (discrete: the first choice; interval: its start)."""
    key = override.get_key_element()
    if not override.is_sweep_override():
        return f"{key}={override.get_value_element_as_str()}"
    if override.is_discrete_sweep():
        return f"{key}={next(iter(override.sweep_string_iterator()))}"
    start = override.value().start
    return f"{key}={int(start) if isinstance(start, float) and start.is_integer() else start}"


def _compose_hydra(overrides: list[str]) -> DictConfig:
    """The config with its `hydra` node (sweeper, launcher, sweep dir); overrides already composed once cleanly."""
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3", job_name="alignlab"):
        return compose(config_name="config", overrides=overrides, return_hydra_config=True)


def _member_config(member: list[str], where: str, parsed: list[Override]) -> DictConfig:
    """Compose and validate one member; its errors name the member by the values it sweeps."""
    swept = {o.get_key_element() for o in parsed if o.is_sweep_override()}
    label = " ".join(o for o in member if o.split("=", 1)[0] in swept) or "the base config"
    try:
        return validate(compose_config(member))
    except ConfigError as exc:
        raise ConfigError(f"{exc} [in {where} ({label}); no member has run]") from None


def _validate_members(members: list[list[str]], parsed: list[Override], objective: str | None, launcher: str) -> None:
    from alignlab.pipeline import run_dir_of  # the pipeline's imports (torch, TRL) only when a sweep runs

    seen: dict[str, int] = {}
    for num, member in enumerate(members):
        where = f"sweep member {num} of {len(members)}"
        cfg = _member_config(member, where, parsed)
        stages = list(cfg.pipeline.stages)
        if objective is not None and objective.partition("/")[0] not in stages:
            raise ConfigError(
                f"Config error at 'sweep.objective': '{objective}' names no stage of {where} "
                f"(stages: {', '.join(stages)}); write <stage>/<metric>."
            )
        if launcher == "slurm" and cfg.launcher.nnodes > 1:
            raise ConfigError(
                f"Config error at 'launcher.nnodes': {where} asks for {cfg.launcher.nnodes} nodes, but "
                "hydra/launcher=slurm runs each member as one Slurm task on one node; submit "
                "multi-node sweeps with `alignlab slurm submit -m ...`."
            )
        run_dir = str(run_dir_of(cfg))
        if run_dir in seen:
            raise ConfigError(
                f"Config error: sweep members {seen[run_dir]} and {num} would share the run directory {run_dir}: "
                "they differ only in keys that are not part of the run id (run.*, logger.*, slurm.*). Sweep "
                "a setting of the run, or give each member its own run.id."
            )
        seen[run_dir] = num


def _direction(sweeper: DictConfig) -> str:
    """optuna's `direction`: an enum in its config, or a list (one per objective); we return one objective."""
    direction = sweeper.get("direction", "minimize")
    if isinstance(direction, ListConfig):
        if len(direction) != 1:
            raise ConfigError(
                "Config error at 'hydra.sweeper.direction': a sweep optimizes one sweep.objective, "
                f"so give one direction (got {list(direction)})."
            )
        direction = direction[0]
    return str(getattr(direction, "name", direction))


def _unused(path: Path) -> Path:
    """Two sweeps of one experiment started in the same second get separate folders."""
    candidate, n = path, 1
    while candidate.exists():
        n += 1
        candidate = path.with_name(f"{path.name}-{n}")
    return candidate


def _quote(value: str) -> str:
    """A Hydra override value taken literally (paths may hold characters of the override grammar)."""
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


# ------------------------------------------------------------------------------------------ running
def multirun(overrides: list[str]) -> dict[str, Any]:
    """Run a sweep (the arguments after `alignlab run -m`); returns the manifest. Raises ConfigError before anything
    runs if a member config is invalid, and SweepFailed after the sweep if any member did not finish."""
    sweep = plan(overrides)
    sweep.sweep_dir.mkdir(parents=True, exist_ok=True)
    started = _now()
    write_manifest(sweep, started, status="running")
    error: BaseException | None = None
    try:
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3", job_name="alignlab"):
            hydra = GlobalHydra.instance().hydra
            assert hydra is not None
            hydra.multirun(
                config_name="config",
                task_function=MemberTask(sweep.sweep_id, sweep.group, sweep.objective),
                overrides=[*sweep.overrides, *sweep.hydra_overrides],
            )
    except Exception as exc:  # a member's failure (re-raised by the sweeper) or the launcher's own
        error = exc
    except StopSweep as stop:  # a signal: record what ran, then exit 75 (re-run the command to resume)
        error = stop.preempted
        raise stop.preempted from None
    except BaseException as exc:  # Ctrl-C: record what ran, then stop
        error = exc
        raise
    finally:
        manifest = write_manifest(sweep, started, status=None, error=error)
        print_summary(manifest)
    not_done = [m for m in manifest["members"] if m["status"] != "done"]
    if not_done or error is not None:
        failed = [m for m in not_done if m["status"] in FAILED]
        if failed or error is None:
            detail = f"member {(failed or not_done)[0]['num']}: {(failed or not_done)[0]['error']}"
        else:
            detail = _describe(error)
        raise SweepFailed(
            f"sweep {sweep.sweep_id}: {len(not_done)} of {len(manifest['members'])} members did not "
            f"finish ({detail}). Manifest: {sweep.sweep_dir / MANIFEST}"
        )
    return manifest


def write_manifest(
    sweep: SweepPlan, started: str, status: str | None, error: BaseException | None = None
) -> dict[str, Any]:
    """Assemble manifest.json from the members' own entry files (written where each member ran)."""
    entries = {}
    for path in sorted((sweep.sweep_dir / MEMBERS).glob("*.json")):
        entry = json.loads(path.read_text())
        if entry.get("sweep_id") == sweep.sweep_id:  # not a reused dir's older sweep
            entries[int(entry["num"])] = entry
    count = max([*entries, -1]) + 1 if sweep.expected is None else max(sweep.expected, len(entries))
    members = []
    for num in range(count):
        entry = entries.get(num) or {
            "num": num,
            "overrides": sweep.members[num] if sweep.sweeper == BASIC_SWEEPER else None,
            "run_dir": None,
            "objective_value": None,
            "wall_seconds": None,
            "status": "not run" if status == "running" else "missing",
            "error": None
            if status == "running"
            else "no record: the member did not run, or its job ended before "
            f"it could write one (killed, out of memory, time limit?); logs: {sweep.sweep_dir}/{num}/, "
            f"{sweep.sweep_dir}/.submitit/",
        }
        members.append({k: v for k, v in entry.items() if k != "sweep_id"})
    if isinstance(error, (Preempted, KeyboardInterrupt)):
        status = "interrupted"
    elif status is None:
        status = "done" if error is None and all(m["status"] == "done" for m in members) else "failed"
    manifest = {
        "sweep_id": sweep.sweep_id,
        "sweep_dir": str(sweep.sweep_dir),
        "cwd": os.getcwd(),
        "command": sys.argv if Path(sys.argv[0]).name == "alignlab" else ["alignlab", "run", "-m", *sweep.arguments],
        "overrides": sweep.overrides,
        "sweeper": sweep.sweeper,
        "launcher": sweep.launcher,
        "wandb_group": sweep.group,
        "objective": sweep.objective,
        "direction": sweep.direction,
        "started": started,
        "ended": None if status == "running" else _now(),
        "status": status,
        "error": _describe(error) if error is not None else None,
        "members": members,
        "best": _best(members, sweep.direction),
    }
    atomic_write_json(sweep.sweep_dir / MANIFEST, manifest)
    return manifest


def _best(members: list[dict[str, Any]], direction: Any) -> dict[str, Any] | None:
    scored = [m for m in members if m["status"] == "done" and m.get("objective_value") is not None]
    if not scored or direction not in ("minimize", "maximize"):
        return None
    pick = min if direction == "minimize" else max
    best = pick(scored, key=lambda m: m["objective_value"])
    return {"num": best["num"], "objective_value": best["objective_value"], "overrides": best["overrides"]}


def print_summary(manifest: dict[str, Any]) -> None:
    """One row per member: the overrides that differ between members, its run dir, status, objective, seconds."""
    from rich.console import Console
    from rich.table import Table

    lists = [m["overrides"] or [] for m in manifest["members"]]
    common = set.intersection(*(set(x) for x in lists)) if len(lists) > 1 else set()
    table = Table(
        title=f"sweep {manifest['sweep_id']} ({manifest['sweeper']} sweeper, {manifest['launcher']} launcher)"
    )
    for column in (
        "member",
        "overrides",
        "run dir",
        "status",
        *(["objective"] if manifest["objective"] else []),
        "seconds",
    ):
        numeric = column in ("member", "objective", "seconds")
        table.add_column(column, justify="right" if numeric else "left", overflow="fold")
    for m, overrides in zip(manifest["members"], lists):
        row = [
            str(m["num"]),
            " ".join(o for o in overrides if o not in common) or "-",
            m["run_dir"] or "-",
            m["status"],
        ]
        if manifest["objective"]:
            row.append("-" if m.get("objective_value") is None else f"{m['objective_value']:.4g}")
        row.append("-" if m.get("wall_seconds") is None else f"{m['wall_seconds']:.0f}")
        table.add_row(*row)
    out = Console(highlight=False)
    out.print(table)
    for m in manifest["members"]:
        if m["status"] in FAILED:
            out.print(f"member {m['num']} {m['status']}: {m['error']}", markup=False)
    if manifest["error"] and not any(m["status"] in FAILED for m in manifest["members"]):
        out.print(f"the sweep stopped: {manifest['error']}", markup=False)
    if manifest["best"]:
        out.print(
            f"best ({manifest['direction']} {manifest['objective']}): member {manifest['best']['num']}, "
            f"{manifest['best']['objective_value']:.6g}"
        )
    out.print(f"manifest: {Path(manifest['sweep_dir']) / MANIFEST}   W&B group: {manifest['wandb_group']}")


def _describe(exc: BaseException | None) -> str:
    if isinstance(exc, UserError):
        return str(exc)
    return f"{type(exc).__name__}: {' '.join(str(exc).split())}"


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")
