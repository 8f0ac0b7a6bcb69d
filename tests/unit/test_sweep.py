"""Sweeps (`alignlab run -m`): Hydra's basic and optuna sweepers, the local and Slurm launchers, the manifest, one
W&B group per sweep, and every member validated before the first one trains."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import submitit
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from omegaconf import OmegaConf
from slurm_cluster import slurm_cluster  # noqa: F401
from wandb_reader import config as wandb_config
from wandb_reader import records

from alignlab import cli, sweep
from alignlab.config import CONF_DIR


@pytest.fixture(autouse=True)
def one_thread_per_process(monkeypatch):
    """Jobs, ranks and reference runs share 2 cores: with torch's default of one thread per core each, they would
    oversubscribe them (a DPO step 30x slower). Submitted jobs inherit this environment (sbatch --export=ALL)."""
    monkeypatch.setenv("OMP_NUM_THREADS", "1")


def quick(root: Path, *more: str, logger: str = "none", sft_steps: int = 2) -> list[str]:
    """`alignlab run -m` arguments for a short SFT -> DPO (two DPO steps) on the tiny model, runs under `root`."""
    return [
        "run",
        "-m",
        "experiment=tiny",
        f"algo.sft.max_steps={sft_steps}",
        "algo.dpo.max_steps=2",
        f"logger={logger}",
        f"run.root={root}",
        *more,
    ]


def the_manifest(root: Path) -> dict[str, Any]:
    (sweep_dir,) = (root / "sweeps" / "tiny").iterdir()
    return json.loads((sweep_dir / "manifest.json").read_text())


def assert_run_done(run_dir: str, root: Path) -> Path:
    run = Path(run_dir)
    assert run.parent == root / "tiny", run
    for stage in ("sft", "dpo"):
        assert (run / stage / "DONE").is_file(), f"{run}/{stage} unfinished"
    return run


@pytest.mark.slow
def test_a_basic_sweep_runs_every_member_in_one_wandb_group(tmp_path, cache_dir, capsys):
    betas = ("0.05", "0.1", "0.3")
    assert cli.main(quick(tmp_path, f"algo.dpo.beta={','.join(betas)}", logger="wandb")) == 0

    manifest = the_manifest(tmp_path)
    group = manifest["wandb_group"]
    assert group == manifest["sweep_id"] and group.startswith("tiny-sweep-")
    assert (manifest["status"], manifest["sweeper"], manifest["launcher"]) == ("done", "basic", "basic")
    assert Path(manifest["sweep_dir"]).parent == tmp_path / "sweeps" / "tiny"
    assert [m["num"] for m in manifest["members"]] == [0, 1, 2]
    for member, beta in zip(manifest["members"], betas):
        assert member["status"] == "done" and member["wall_seconds"] > 0
        assert f"algo.dpo.beta={beta}" in member["overrides"] and "experiment=tiny" in member["overrides"]
        run = assert_run_done(member["run_dir"], tmp_path)
        assert OmegaConf.load(run / "config.yaml").algo.dpo.beta == float(beta)
        (wandb_file,) = run.glob("wandb/offline-run-*/run-*.wandb")
        run_groups = {r.run.run_group for r in records(wandb_file) if r.WhichOneof("record_type") == "run"}
        assert run_groups == {group}
        assert wandb_config(wandb_file)["logger"]["group"] == group
    assert len({m["run_dir"] for m in manifest["members"]}) == 3
    out = capsys.readouterr().out
    assert f"sweep {group}" in out and "algo.dpo.beta=0.3" in out and "manifest.json" in out
    for member in manifest["members"]:  # not empty: the member's console output, its summary table included
        log = (Path(manifest["sweep_dir"]) / str(member["num"]) / "alignlab.log").read_text()
        assert member["run_dir"].split("/")[-1] in log and "dpo" in log, log[-2000:]


@pytest.mark.parametrize(
    ("more", "expected"),
    [
        (
            ["algo.dpo.beta=0.05,0.1,-1"],
            ["Config error at 'algo.dpo.beta': must be positive", "sweep member 2 of 3 (algo.dpo.beta=-1)"],
        ),
        (["model=tiny,no-such-model"], ["unknown option 'model/no-such-model'", "sweep member 1 of 2"]),
        (["logger.project=a,b"], ["sweep members 0 and 1 would share the run directory"]),
        (["algo.dpo.beta=interval(0.05,0.5)"], ["interval() needs hydra/sweeper=optuna"]),
        (["hydra/sweeper=optuna", "algo.dpo.beta=interval(0.05,0.5)"], ["name it with sweep.objective="]),
        (
            ["hydra/sweeper=optuna", "algo.dpo.beta=interval(0.05,0.5)", "sweep.objective=eval/kl"],
            ["'eval/kl' names no stage", "stages: sft, dpo"],
        ),
        (["sweep.objectve=dpo/train_loss"], ["sweep arguments are sweep.objective=VALUE"]),
    ],
)
def test_a_bad_sweep_fails_before_any_member_runs(tmp_path, capsys, more, expected):
    assert cli.main(quick(tmp_path, *more)) == 2
    err = " ".join(capsys.readouterr().err.split())
    for text in expected:
        assert text in err
    assert list(tmp_path.iterdir()) == []  # no run dir, no sweep dir


@pytest.mark.slow
def test_a_failed_member_is_recorded_and_the_others_still_run(tmp_path, cache_dir, capsys):
    # The tiny model has 2 layers: top_layers=5 passes validation but fails when the run checks the model.
    more = ["model.lora.enabled=true", "model.lora.top_layers=5,1"]
    assert cli.main(quick(tmp_path, *more)) == 1

    manifest = the_manifest(tmp_path)
    failed, done = manifest["members"]
    assert manifest["status"] == "failed"
    assert failed["status"] == "failed" and "model.lora.top_layers" in failed["error"]
    assert "model.lora.top_layers=5" in failed["overrides"]
    assert done["status"] == "done" and "model.lora.top_layers=1" in done["overrides"]
    assert_run_done(done["run_dir"], tmp_path)
    captured = capsys.readouterr()
    assert "1 of 2 members did not finish" in captured.err and "member 0 failed" in captured.out
    sweep_dir = Path(manifest["sweep_dir"])  # each member's own log holds what it printed, its error too
    assert "model.lora.top_layers" in (sweep_dir / "0" / "alignlab.log").read_text()
    assert "dpo" in (sweep_dir / "1" / "alignlab.log").read_text()


@pytest.mark.slow
def test_a_signal_stops_a_local_sweep_not_just_its_member(tmp_path, tiny_model):
    args = quick(tmp_path, "algo.sft.save_steps=5", "algo.dpo.beta=0.05,0.1", sft_steps=2000)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "alignlab.cli", *args],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 120
    while not list(tmp_path.glob("tiny/*/sft/checkpoints/checkpoint-*")):  # member 0 is training
        assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read() if proc.stderr else ""
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)

    assert proc.returncode == 75, err  # Preempted: the same command resumes
    manifest = the_manifest(tmp_path)
    first, second = manifest["members"]
    assert manifest["status"] == "interrupted"
    assert first["status"] == "interrupted" and "checkpoint" in first["error"]
    assert second["status"] == "missing"  # never started
    assert [p.name for p in (tmp_path / "tiny").iterdir()] == [Path(first["run_dir"]).name]


@pytest.mark.slow
def test_an_optuna_sweep_returns_and_records_the_objective(tmp_path, cache_dir):
    more = [
        "hydra/sweeper=optuna",
        "hydra.sweeper.n_trials=2",
        "hydra.sweeper.sampler.seed=0",
        "algo.dpo.beta=interval(0.05,0.5)",
        "sweep.objective=dpo/train_loss",
    ]
    assert cli.main(quick(tmp_path, *more)) == 0

    manifest = the_manifest(tmp_path)
    assert manifest["sweeper"] == "optuna" and manifest["objective"] == "dpo/train_loss"
    assert manifest["direction"] == "minimize"
    values = []
    for member in manifest["members"]:
        run = assert_run_done(member["run_dir"], tmp_path)
        summary = json.loads((run / "summary.json").read_text())
        assert member["objective_value"] == summary["dpo"]["train_loss"]
        values.append(member["objective_value"])
    assert len(values) == 2 and len({m["run_dir"] for m in manifest["members"]}) == 2
    assert manifest["best"]["objective_value"] == min(values)
    optuna_result = OmegaConf.load(Path(manifest["sweep_dir"]) / "optimization_results.yaml")
    assert optuna_result.best_value == min(values)  # what the task returned is what optuna optimized


@pytest.mark.slow
def test_a_sweep_on_slurm_runs_each_member_as_a_job(tmp_path, tiny_model, slurm_cluster):  # noqa: F811
    more = [
        "algo.dpo.beta=0.05,0.1,0.3",
        "hydra/launcher=slurm",
        f"slurm.partition={slurm_cluster.partition}",
        "slurm.time=00:10:00",
    ]
    assert cli.main(quick(tmp_path, *more)) == 0

    manifest = the_manifest(tmp_path)
    sweep_dir = Path(manifest["sweep_dir"])
    assert (manifest["status"], manifest["launcher"]) == ("done", "slurm")
    assert [m["status"] for m in manifest["members"]] == ["done"] * 3
    jobs = {m["slurm_job_id"] for m in manifest["members"]}
    assert len(jobs) == 3 and None not in jobs
    records = {r["JobId"]: r for job in jobs for r in slurm_cluster.wait(job)}  # Slurm's own record, once ended
    for member in manifest["members"]:
        assert_run_done(member["run_dir"], tmp_path)
        assert (sweep_dir / "members" / f"{member['num']}.json").is_file()  # written inside the member's job
        record = records[member["slurm_job_id"]]
        assert record["JobState"] == "COMPLETED" and record["ArrayTaskId"] == str(member["num"])
    assert len({records[job]["ArrayJobId"] for job in jobs}) == 1  # one job array
    assert any((sweep_dir / ".submitit").iterdir())


@pytest.mark.skipif(
    shutil.which("srun") is None,
    reason="submitit's Slurm executor looks for srun when set up; apt-get install slurm-client (.ci/run does)",
)
def test_the_slurm_launcher_takes_its_resources_from_the_slurm_keys(tmp_path, monkeypatch):
    overrides = [
        "experiment=tiny",
        "hydra/launcher=slurm",
        "slurm.partition=gpu",
        "slurm.time=02:00:00",
        "slurm.account=lab",
        "slurm.qos=high",
        "slurm.cpus_per_task=4",
        "slurm.gpus_per_node=2",
        "launcher.nproc_per_node=2",
        "distributed=ddp",
        "slurm.mem=64G",
        "slurm.signal_seconds=120",
        "slurm.extra=['--constraint=a100','--exclusive']",
        "slurm.setup=['module load cuda']",
        f"hydra.sweep.dir={tmp_path}",
    ]
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose(config_name="config", overrides=overrides, return_hydra_config=True)
    launcher = instantiate(cfg.hydra.launcher)  # hydra-submitit-launcher's SlurmLauncher
    launcher.setup(hydra_context=None, task_function=None, config=cfg)
    expected = {
        "partition": "gpu",
        "account": "lab",
        "qos": "high",
        "timeout_min": 120,
        "tasks_per_node": 1,
        "nodes": 1,
        "cpus_per_task": 8,
        "gpus_per_node": 2,
        "signal_delay_s": 120,
        "max_num_timeout": 3,
        "name": "alignlab-tiny",
        "submitit_folder": f"{tmp_path}/.submitit/%j",
        "additional_parameters": {"mem": "64G", "constraint": "a100", "exclusive": True},
        "setup": ["module load cuda"],
    }
    assert {k: launcher.params[k] for k in expected} == expected

    scripts = []  # the sbatch script submitit would submit, from submitit's own code

    def capture(executor: submitit.AutoExecutor, fn: Any, *args: Any) -> list:
        scripts.append(executor._executor._make_submission_file_text("COMMAND", "uid"))
        return []

    monkeypatch.setattr(submitit.AutoExecutor, "map_array", capture)
    launcher.launch([["seed=1"]], initial_job_idx=0)
    for line in (
        "#SBATCH --partition=gpu",
        "#SBATCH --account=lab",
        "#SBATCH --qos=high",
        "#SBATCH --time=120",
        "#SBATCH --ntasks-per-node=1",
        "#SBATCH --cpus-per-task=8",
        "#SBATCH --gpus-per-node=2",
        "#SBATCH --mem=64G",
        "#SBATCH --constraint=a100",
        "#SBATCH --exclusive",
        "#SBATCH --signal=USR2@120",
        "#SBATCH --job-name=alignlab-tiny",
        "module load cuda",
    ):
        assert line in scripts[0], line


@pytest.mark.parametrize(
    ("limit", "minutes"), [("30", 30), ("30:30", 31), ("02:00:00", 120), ("2-00:00:00", 2880), ("1-12", 2160)]
)
def test_slurm_time_limits_convert_to_submitit_minutes(limit, minutes):
    assert sweep._minutes(limit) == minutes
