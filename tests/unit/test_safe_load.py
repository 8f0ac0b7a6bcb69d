"""No code runs from a run folder on resume: a pickle planted in any kind of checkpoint file is refused with a
clear error before a library unpickles it, and the planted code never runs."""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from alignlab.errors import RunStateError
from alignlab.safe_load import load_state, verify_checkpoint


class Planted:
    """What an attacker would plant: unpickling it calls `Path.touch` on a marker file (a stand-in for any code)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def plant(path: Path, marker: Path, *, zip_format: bool = True) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {"state": torch.zeros(2), "evil": Planted(marker)}
    if zip_format:
        torch.save(payload, path)
    else:
        path.write_bytes(pickle.dumps(payload))


# One file of each kind that accelerate, transformers, DeepSpeed or alignlab itself writes into a checkpoint.
KINDS = [
    "ppo_state.pt",  # alignlab's PPO state
    "custom_checkpoint_0.pkl",  # accelerate's registered objects (unpickled with weights_only=False by accelerate)
    "optimizer.bin",  # accelerate's optimizer
    "random_states_0.pkl",  # accelerate's RNG
    "optimizer.pt",  # transformers' Trainer
    "scheduler.pt",
    "rng_state.pth",
    "global_step4/mp_rank_00_model_states.pt",  # DeepSpeed's engine
    "global_step4/bf16_zero_pp_rank_0_mp_rank_00_optim_states.pt",
    "pytorch_model.bin",  # a model's weights in the pickle format
]


@pytest.mark.parametrize("name", KINDS)
@pytest.mark.parametrize("zip_format", [True, False], ids=["torch-zip", "plain-pickle"])
def test_a_planted_pickle_is_refused_and_never_runs(tmp_path, name, zip_format):
    ckpt, marker = tmp_path / "checkpoint-4", tmp_path / "code-ran"
    ckpt.mkdir()
    torch.save({"weights": torch.ones(3)}, ckpt / "fine.pt")
    plant(ckpt / name, marker, zip_format=zip_format)
    with pytest.raises(RunStateError) as err:
        verify_checkpoint(ckpt)
    message = str(err.value)
    assert str(ckpt / name) in message and "could run code" in message
    assert "names the global `getattr`" in message or not zip_format  # (Path.touch pickles as getattr(Path, ...))
    assert not marker.exists()


def test_load_state_refuses_a_planted_state_file(tmp_path):
    marker = tmp_path / "code-ran"
    plant(tmp_path / "ppo_state.pt", marker)
    with pytest.raises(RunStateError, match=r"ppo_state\.pt"):
        load_state(tmp_path / "ppo_state.pt")
    assert not marker.exists()


def test_what_alignlab_and_the_libraries_write_loads(tmp_path):
    """The real contents of checkpoints pass: tensors, an optimizer's state, a generator's state, plain data and the
    numpy arrays of accelerate's RNG files."""
    model = torch.nn.Linear(3, 2)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model(torch.ones(1, 3)).sum().backward()
    opt.step()
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: 1.0)
    state = {
        "iteration": 4,
        "history": [{"step": 1, "loss": 0.5}],
        "kl_coef": 0.05,
        "generator": torch.Generator().manual_seed(1).get_state(),
        "optimizer": opt.state_dict(),
        "scheduler": sched.state_dict(),
        "lagrange": None,
    }
    ckpt = tmp_path / "checkpoint-4"
    ckpt.mkdir()
    torch.save(state, ckpt / "ppo_state.pt")
    torch.save(
        {
            "random_state": (3, tuple(range(5)), None),
            "numpy_random_seed": np.random.get_state(),
            "torch_manual_seed": torch.get_rng_state(),
        },
        ckpt / "random_states_0.pkl",
    )
    verify_checkpoint(ckpt)
    back = load_state(ckpt / "ppo_state.pt")
    assert back["iteration"] == 4 and back["history"] == state["history"]
    assert torch.equal(back["generator"], state["generator"])


def test_a_truncated_state_file_is_a_clear_error(tmp_path):
    torch.save({"w": torch.ones(1000)}, tmp_path / "ppo_state.pt")
    data = (tmp_path / "ppo_state.pt").read_bytes()
    (tmp_path / "ppo_state.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(RunStateError, match=r"ppo_state\.pt.*damaged"):
        load_state(tmp_path / "ppo_state.pt")


# ------------------------------------------------------------------------ the real command on resume (slow)
def _alignlab(tmp: Path, cache: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "ALIGNLAB_CACHE": str(cache), "WANDB_MODE": "offline"}
    cmd = [sys.executable, "-m", "alignlab.cli", "run", "experiment=tiny", "logger=none", f"run.root={tmp}", *args]
    return subprocess.run(cmd, cwd=tmp, env=env, capture_output=True, text=True, timeout=600)


STAGES = {
    "dpo": ["algo.dpo.max_steps=4", "algo.dpo.save_steps=2"],
    "ppo": [
        "pipeline=sft-rm-ppo",
        "pipeline.stages=[ppo]",
        "algo.ppo.max_steps=2",
        "algo.ppo.save_steps=2",
        "algo.ppo.batch_size=8",
        "algo.ppo.mini_batch_size=4",
        "algo.ppo.max_new_tokens=8",
        "algo.ppo.reward=contains:is",
    ],
}
PLANTED_IN = {"dpo": ["optimizer.pt", "rng_state.pth"], "ppo": ["ppo_state.pt", "custom_checkpoint_0.pkl"]}


@pytest.mark.slow
@pytest.mark.parametrize("stage", list(STAGES))
def test_resume_refuses_a_planted_checkpoint_before_loading_it(tmp_path, cache_dir, stage):
    """A finished stage made unfinished (its DONE removed) resumes from its last checkpoint: with a planted file
    in that checkpoint the run stops with exit 2 and one paragraph naming the file, and the code never runs."""
    first = _alignlab(tmp_path, cache_dir, "run.id=r", *STAGES[stage])
    assert first.returncode == 0, first.stdout[-2000:] + first.stderr[-3000:]
    stage_dir = tmp_path / "tiny" / "r" / stage
    ckpt = max(stage_dir.glob("checkpoints/checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))
    (stage_dir / "DONE").unlink()
    for name in PLANTED_IN[stage]:
        assert (ckpt / name).is_file(), sorted(p.name for p in ckpt.iterdir())
        marker = tmp_path / f"ran-{name}"
        original = (ckpt / name).read_bytes()
        plant(ckpt / name, marker)
        proc = _alignlab(tmp_path, cache_dir, "run.id=r", *STAGES[stage])
        assert proc.returncode == 2, proc.stdout[-2000:] + proc.stderr[-3000:]
        assert f"Refusing to load {ckpt / name}" in " ".join((proc.stdout + proc.stderr).split())
        assert "Traceback" not in proc.stderr
        assert not marker.exists()
        (ckpt / name).write_bytes(original)
    proc = _alignlab(tmp_path, cache_dir, "run.id=r", *STAGES[stage])  # the genuine checkpoint still resumes
    assert proc.returncode == 0 and f"{stage}: resuming from {ckpt.name}" in proc.stdout, proc.stdout[-2000:]
