"""The `distributed` group and rank launch: generated DeepSpeed configs, validation, launch commands, Slurm
rendezvous; then real 2-rank runs (gloo on the CPU) of the tiny SFT -> DPO experiment against one process."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from alignlab import distributed, launch
from alignlab.config import compose_config, validate
from alignlab.errors import ConfigError

TINY = ["experiment=tiny", "logger=none"]


def cfg_of(*overrides: str):
    return validate(compose_config([*TINY, *overrides]))


# ------------------------------------------------------------------------------------------- fast tests
def test_deepspeed_config_is_generated_from_the_group():
    assert distributed.deepspeed_config(cfg_of()) is None
    assert distributed.deepspeed_config(cfg_of("distributed=ddp")) is None
    ds = distributed.deepspeed_config(cfg_of("distributed=zero3-offload"))
    assert ds == {
        "train_micro_batch_size_per_gpu": "auto",
        "gradient_accumulation_steps": "auto",
        "train_batch_size": "auto",
        "gradient_clipping": "auto",
        "bf16": {"enabled": "auto"},
        "fp16": {"enabled": "auto"},
        "zero_optimization": {
            "stage": 3,
            "overlap_comm": False,  # True on GPUs
            "contiguous_gradients": True,
            "offload_optimizer": {"device": "cpu", "pin_memory": False},
            "offload_param": {"device": "cpu", "pin_memory": False},
            "stage3_gather_16bit_weights_on_model_save": True,
            "stage3_prefetch_bucket_size": "auto",
            "stage3_param_persistence_threshold": "auto",
            "reduce_bucket_size": "auto",
        },
        "steps_per_print": 10**9,
        "wall_clock_breakdown": False,
    }
    z2 = distributed.deepspeed_config(
        cfg_of(
            "distributed=zero2",
            "+distributed.deepspeed.communication_data_type=fp32",
            "+distributed.deepspeed.zero_optimization.reduce_bucket_size=1000",
        )
    )
    assert z2["zero_optimization"] == {
        "stage": 2,
        "overlap_comm": False,
        "contiguous_gradients": True,
        "reduce_bucket_size": 1000,
    }
    assert z2["communication_data_type"] == "fp32"
    assert distributed.deepspeed_config(cfg_of("distributed=zero1"))["zero_optimization"]["stage"] == 1


def test_run_wide_precision_and_checkpointing_override_the_stages():
    cfg = cfg_of("distributed=zero3", "distributed.precision=bf16", "distributed.gradient_checkpointing=true")
    assert distributed.stage_precision(cfg, cfg.algo.dpo) == "bf16"
    assert distributed.stage_checkpointing(cfg, cfg.algo.sft) is True
    plain = cfg_of("algo.dpo.precision=fp16")
    assert distributed.stage_precision(plain, plain.algo.dpo) == "fp16"
    assert distributed.stage_checkpointing(plain, plain.algo.dpo) == "auto"  # resolved in training/trainer.py


def test_fill_auto_resolves_what_a_trainer_would():
    ds = distributed.deepspeed_config(cfg_of("distributed=zero3"))
    out = distributed.fill_auto(ds, micro_batch=4, grad_accum=2, clip=1.0, precision="bf16")
    assert (out["train_micro_batch_size_per_gpu"], out["gradient_accumulation_steps"], out["train_batch_size"]) == (
        4,
        2,
        8,
    )
    assert out["bf16"] == {"enabled": True} and out["fp16"] == {"enabled": False} and out["gradient_clipping"] == 1.0
    assert "auto" not in json.dumps(out)


@pytest.mark.parametrize(
    ("overrides", "key"),
    [
        (["distributed=ddp", "distributed.zero_stage=2"], "distributed.zero_stage"),
        (["distributed=zero2", "distributed.offload_params=true"], "distributed.offload_params"),
        (["distributed=ddp", "distributed.offload_optimizer=true"], "distributed.zero_stage"),
        (["launcher.nproc_per_node=2"], "distributed"),
        (["distributed=zero3", "launcher.nproc_per_node=0"], "launcher.nproc_per_node"),
        (["distributed.strategy=fsdp"], "distributed.strategy"),
        (["distributed=zero3", "distributed.precision=fp8"], "distributed.precision"),
        (["slurm.time=2 days"], "slurm.time"),
        (["distributed=ddp", "launcher.nproc_per_node=4", "slurm.gpus_per_node=8"], "slurm.gpus_per_node"),
    ],
)
def test_bad_distributed_settings_name_the_key(overrides, key):
    with pytest.raises(ConfigError, match=f"at '{key}'"):
        cfg_of(*overrides)


def test_local_launch_uses_torch_distributed_run(monkeypatch, tmp_path):
    monkeypatch.delenv("SLURM_JOB_ID", raising=False)
    cmd = launch.command(
        cfg_of("distributed=zero3", "launcher.nproc_per_node=4", "launcher.master_port=29411"), tmp_path
    )
    assert cmd == [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node=4",
        "--nnodes=1",
        "--master_addr=127.0.0.1",
        "--master_port=29411",
        "-m",
        "alignlab.rank",
        str(tmp_path),
    ]
    with pytest.raises(ConfigError, match=r"launcher\.nnodes.*Slurm allocation"):
        launch.command(cfg_of("distributed=zero3", "launcher.nnodes=2"), tmp_path)


def test_inside_slurm_the_ranks_are_srun_tasks(monkeypatch, tmp_path):
    """The step starts on the allocation's first node (--relative=0), whose Slurm address every rank rendezvouses at."""
    monkeypatch.setenv("SLURM_JOB_ID", "4242")
    monkeypatch.setenv("SLURM_JOB_NODELIST", "node[001-002]")
    monkeypatch.setattr(shutil, "which", lambda name: f"/usr/bin/{name}")
    monkeypatch.setattr(launch, "node_address", {"node001": "10.1.0.1"}.__getitem__)
    cmd = launch.command(cfg_of("distributed=zero3", "launcher.nnodes=2", "launcher.nproc_per_node=8"), tmp_path)
    assert cmd == [
        "srun",
        "--nodes=2",
        "--relative=0",
        "--ntasks=16",
        "--ntasks-per-node=8",
        "--kill-on-bad-exit=1",
        "--export=ALL,MASTER_ADDR=10.1.0.1",
        sys.executable,
        "-m",
        "alignlab.rank",
        str(tmp_path),
    ]


@pytest.mark.parametrize(
    ("nodelist", "first"),
    [
        ("gpu07", "gpu07"),
        ("gpu[07-08]", "gpu07"),
        ("gpu[11,07-08],cpu1", "gpu11"),
        ("node-3,node-1", "node-3"),
        ("rack[1-2]-n[001-004]", "rack1-n001"),
        ("a[9]b", "a9b"),
    ],
)
def test_the_first_host_of_a_slurm_nodelist(nodelist, first):
    assert launch.first_host(nodelist) == first


def fake_scontrol(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, script: str) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "scontrol").write_text(f"#!/bin/sh\n{script}\n")
    (bin_dir / "scontrol").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")


def test_a_node_address_is_its_slurm_node_addr(tmp_path, monkeypatch):
    fake_scontrol(
        tmp_path,
        monkeypatch,
        '[ "$*" = "show node node001 --oneliner" ] && echo "NodeName=node001 Arch=x86_64 NodeAddr=10.1.0.1 '
        'NodeHostName=node001 Version=22.05.8"',
    )
    assert launch.node_address("node001") == "10.1.0.1"


def test_a_node_address_falls_back_to_its_name(tmp_path, monkeypatch):
    """Where scontrol cannot answer (no controller, no slurm.conf), the name is the best guess, as before."""
    fake_scontrol(tmp_path, monkeypatch, "echo 'slurm_load_node error: Unable to contact slurm controller' >&2; exit 1")
    assert launch.node_address("node001") == "node001"


def test_a_srun_task_finds_its_rank_and_the_first_node(monkeypatch):
    # A private copy of the environment: what env_from_slurm sets must not leak into later tests' subprocesses.
    monkeypatch.setattr(
        os,
        "environ",
        {
            k: v
            for k, v in os.environ.items()
            if k
            not in (
                "RANK",
                "WORLD_SIZE",
                "LOCAL_RANK",
                "LOCAL_WORLD_SIZE",
                "MASTER_ADDR",
                "MASTER_PORT",
                "SLURM_STEP_NODELIST",
            )
        },
    )
    monkeypatch.setenv("SLURM_PROCID", "9")
    monkeypatch.setenv("SLURM_LOCALID", "1")
    monkeypatch.setenv("SLURM_NTASKS", "16")
    monkeypatch.setenv("SLURM_NTASKS_PER_NODE", "8(x2)")
    monkeypatch.setenv("SLURM_JOB_NODELIST", "gpu[07-08]")
    monkeypatch.setenv("SLURM_JOB_ID", "123456")
    launch.env_from_slurm(cfg_of("distributed=zero3", "launcher.nnodes=2", "launcher.nproc_per_node=8"))
    got = {
        k: os.environ[k] for k in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")
    }
    assert got == {
        "RANK": "9",
        "LOCAL_RANK": "1",
        "WORLD_SIZE": "16",
        "LOCAL_WORLD_SIZE": "8",
        "MASTER_ADDR": "gpu07",
        "MASTER_PORT": str(20000 + 123456 % 20000),
    }
    os.environ.pop("RANK")
    os.environ["MASTER_ADDR"] = "10.1.0.7"  # what `command` gave srun (the first node's NodeAddr) is kept
    launch.env_from_slurm(cfg_of("distributed=zero3", "launcher.nnodes=2", "launcher.nproc_per_node=8"))
    assert os.environ["MASTER_ADDR"] == "10.1.0.7"


def test_held_bytes_counts_params_and_adam_moments():
    model = torch.nn.Linear(10, 4)  # 44 parameters
    opt = torch.optim.Adam(model.parameters())
    assert distributed.held_bytes(model, opt) == {"params_bytes": 44 * 4, "master_bytes": 0, "moments_bytes": 0}
    model(torch.ones(2, 10)).sum().backward()
    opt.step()
    held = distributed.held_bytes(model, opt)
    assert held["moments_bytes"] == 2 * 44 * 4 + 2 * 4  # exp_avg, exp_avg_sq and a float32 step per tensor


# ----------------------------------------------------------------------------- real ranks (gloo on the CPU)
STEPS = ["algo.sft.max_steps=4", "algo.dpo.max_steps=4", "algo.sft.save_steps=2", "algo.dpo.save_steps=2"]
PER_RANK = ["algo.sft.batch_size=4", "algo.dpo.batch_size=4"]  # 2 ranks x 4 = the single process's 8


def alignlab(tmp: Path, cache: Path, *args: str, check: bool = True, timeout: int = 600):
    env = {**os.environ, "ALIGNLAB_CACHE": str(cache), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "alignlab.cli", *args], cwd=tmp, env=env, capture_output=True, text=True, timeout=timeout
    )
    if check:
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    return proc


def losses(run_dir: Path, stage: str) -> list[float]:
    return [h["loss"] for h in json.loads((run_dir / stage / "log_history.json").read_text()) if "loss" in h]


def only_run(root: Path) -> Path:
    (run,) = list((root / "tiny").iterdir())
    return run


@pytest.fixture(scope="module")
def runs(tmp_path_factory, cache_dir) -> dict[str, Path]:
    """The tiny SFT -> DPO experiment in one process and in 2 ranks under each strategy."""
    tmp = tmp_path_factory.mktemp("ranks")
    variants = {
        "single": [],
        "ddp": ["distributed=ddp", "launcher.nproc_per_node=2", *PER_RANK],
        "zero0": ["distributed=zero1", "distributed.zero_stage=0", "launcher.nproc_per_node=2", *PER_RANK],
        "zero2": ["distributed=zero2", "launcher.nproc_per_node=2", *PER_RANK],
        "zero3": ["distributed=zero3", "launcher.nproc_per_node=2", *PER_RANK],
    }
    out = {}
    for name, overrides in variants.items():
        root = tmp / name
        alignlab(tmp, cache_dir, "run", *TINY, *STEPS, f"run.root={root}", *overrides)
        out[name] = only_run(root)
    return out


@pytest.mark.slow
def test_two_ranks_give_the_single_process_losses(runs):
    """Same global batch (2 x 4 = 8), same data order: the losses agree to float-reduction noise."""
    print("\nlosses per step (sft | dpo):")
    for name, run in runs.items():
        print(f"  {name:>6}: {losses(run, 'sft')} | {losses(run, 'dpo')}")
    for stage in ("sft", "dpo"):
        expected = losses(runs["single"], stage)
        assert len(expected) == 4
        for name in ("ddp", "zero0", "zero2", "zero3"):
            assert losses(runs[name], stage) == pytest.approx(expected, rel=1e-4), (name, stage)
    for name, run in runs.items():  # every variant saved a whole model that the next stage and a user can load
        assert (run / "dpo" / "model" / "model.safetensors").is_file(), name
        assert len(list((run / "dpo" / "checkpoints").glob("checkpoint-*/COMPLETE"))) >= 1, name


@pytest.mark.slow
def test_zero3_holds_about_half_the_parameters_and_optimizer_state_of_zero0(runs):
    table = {
        name: json.loads((runs[name] / "dpo" / "metrics.json").read_text()) for name in ("zero0", "zero2", "zero3")
    }
    parts = ("params", "master", "moments")
    print("\nper-rank MiB held after DPO (2 ranks, fp32):")
    print(f"  {'':>6} {'rank':>4} " + " ".join(f"{p:>8}" for p in parts) + f" {'total':>8} {'peak RSS':>9}")
    totals = {}
    for name, m in table.items():
        for r in (0, 1):
            held = [m[f"memory/rank{r}/{p}_mib"] for p in parts]
            totals[name, r] = sum(held)
            print(
                f"  {name:>6} {r:>4} "
                + " ".join(f"{v:8.4f}" for v in held)
                + f" {sum(held):8.4f} {m[f'memory/rank{r}/peak_rss_mib']:9.1f}"
            )
    z0, z3 = table["zero0"], table["zero3"]
    for r in (0, 1):
        assert z3[f"memory/rank{r}/params_mib"] == pytest.approx(z0[f"memory/rank{r}/params_mib"] / 2, rel=0.05)
        assert z3[f"memory/rank{r}/moments_mib"] == pytest.approx(z0[f"memory/rank{r}/moments_mib"] / 2, rel=0.05)
        # In fp32 DeepSpeed's ZeRO keeps a separate fp32 master shard (P/2) besides the parameter shard: 2/3.
        ratio = totals["zero3", r] / totals["zero0", r]
        print(f"  rank {r}: ZeRO-3 / ZeRO-0 = {ratio:.3f}")
        assert ratio < 0.7


@pytest.mark.slow
def test_deepspeed_checkpoints_pass_the_safe_load_check(runs):
    """Resume checks every pickle in a checkpoint under torch's weights-only unpickler (safe_load.py): the files that
    DeepSpeed's ZeRO-2 and ZeRO-3 engines and transformers write must pass it, or no DeepSpeed run could resume."""
    from alignlab.safe_load import pickle_files, verify_checkpoint

    for name in ("zero2", "zero3"):
        checkpoints = sorted(runs[name].glob("*/checkpoints/checkpoint-*"))
        assert checkpoints, f"{name} saved no checkpoint"
        for ckpt in checkpoints:
            assert any("global_step" in str(p) for p in pickle_files(ckpt)), ckpt
            verify_checkpoint(ckpt)


@pytest.mark.slow
def test_precomputed_reference_logps_and_lora_under_zero3(tmp_path, cache_dir, tiny_model):
    """TRL issues 1497/2985: precomputed reference log-probabilities under ZeRO-2/3; LoRA's adapter gathered and
    merged on save."""
    from alignlab.models import load_model

    for extra in (
        ["distributed=zero3", "algo.dpo.precompute_ref_log_probs=true"],
        ["distributed=zero2", "algo.dpo.precompute_ref_log_probs=true"],
        ["distributed=zero3", "model.lora.enabled=true", "model.lora.r=4"],
    ):
        root = tmp_path / "_".join(e.split("=")[-1] for e in extra)
        alignlab(
            tmp_path,
            cache_dir,
            "run",
            *TINY,
            *STEPS,
            *PER_RANK,
            "launcher.nproc_per_node=2",
            f"run.root={root}",
            *extra,
        )
        run = only_run(root)
        assert len(losses(run, "dpo")) == 4
        model = load_model(str(run / "dpo" / "model"), cfg_of().model)
        assert sum(p.numel() for p in model.parameters()) == sum(
            p.numel() for p in load_model(tiny_model, cfg_of().model).parameters()
        )


@pytest.mark.slow
def test_a_signal_checkpoints_every_rank_and_resume_finishes_like_an_uninterrupted_run(tmp_path, cache_dir):
    args = [
        *TINY,
        "distributed=zero2",
        "launcher.nproc_per_node=2",
        *PER_RANK,
        "algo.sft.max_steps=2",
        "algo.dpo.max_steps=60",
        "algo.dpo.save_steps=5",
        "algo.dpo.final_eval=false",
    ]
    alignlab(tmp_path, cache_dir, "run", *args, f"run.root={tmp_path / 'straight'}")
    reference = losses(only_run(tmp_path / "straight"), "dpo")

    root = tmp_path / "stopped"
    env = {**os.environ, "ALIGNLAB_CACHE": str(cache_dir), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "alignlab.cli", "run", *args, f"run.root={root}"],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    deadline = time.time() + 300
    while not list(root.glob("tiny/*/dpo/checkpoints/checkpoint-5/COMPLETE")) and time.time() < deadline:
        time.sleep(0.2)
    proc.send_signal(signal.SIGUSR1)  # the launching process passes it on to both ranks
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 75, out[-4000:]
    assert "checkpointing and stopping" in out
    run = only_run(root)
    stopped_at = max(int(p.parent.name.split("-")[1]) for p in run.glob("dpo/checkpoints/checkpoint-*/COMPLETE"))
    assert 5 <= stopped_at < 60 and not (run / "dpo" / "DONE").exists()

    resumed = alignlab(tmp_path, cache_dir, "resume", str(run))
    assert f"resuming from checkpoint-{stopped_at}" in resumed.stdout + resumed.stderr
    assert losses(run, "dpo") == pytest.approx(reference, rel=1e-5)  # the history up to the checkpoint, then on
    assert len(json.loads((run / "attempts.jsonl").read_text().splitlines()[-1])["done_before"]) == 1  # sft


@pytest.mark.slow
def test_online_rl_stages_under_zero3(tmp_path, cache_dir):
    """sft -> rm -> ppo with a value head, and grpo, in 2 ranks: the reference and reward models are whole on each
    rank when loaded, sharded as inference engines for PPO, and the sharded policy is gathered on save."""
    common = ["algo.sft.max_steps=2", "algo.rm.max_steps=2", "algo.sft.batch_size=4", "algo.rm.batch_size=4"]
    ppo = ["algo.ppo.max_steps=2", "algo.ppo.batch_size=4", "algo.ppo.mini_batch_size=2", "algo.ppo.max_new_tokens=8"]
    grpo = [
        "algo.grpo.max_steps=2",
        "algo.grpo.batch_size=4",
        "algo.grpo.num_generations=4",
        "algo.grpo.max_new_tokens=8",
    ]
    for pipe, last, extra in (("sft-rm-ppo", "ppo", ppo), ("sft-rm-grpo", "grpo", grpo)):
        root = tmp_path / pipe
        alignlab(
            tmp_path,
            cache_dir,
            "run",
            *TINY,
            f"pipeline={pipe}",
            *common,
            *extra,
            "distributed=zero3",
            "launcher.nproc_per_node=2",
            f"run.root={root}",
        )
        run = only_run(root)
        assert (run / last / "DONE").is_file() and (run / last / "model" / "model.safetensors").is_file()
