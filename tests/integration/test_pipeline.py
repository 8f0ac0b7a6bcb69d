"""End to end: the real `alignlab` command on the tiny experiment (SFT -> DPO on the CPU), resume after SIGKILL,
skipping finished stages, refusing changed data, and the W&B offline run it leaves."""

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
from safetensors.torch import load_file
from wandb_reader import config as wandb_config
from wandb_reader import history_keys

from alignlab.artifacts import COMPLETE

pytestmark = pytest.mark.slow


def alignlab(tmp: Path, cache: Path, *args: str, background: bool = False):
    env = {**os.environ, "ALIGNLAB_CACHE": str(cache), "WANDB_MODE": "offline"}
    cmd = [sys.executable, "-m", "alignlab.cli", "run", "experiment=tiny", f"run.root={tmp / 'runs'}", *args]
    if background:
        return subprocess.Popen(cmd, cwd=tmp, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    proc = subprocess.run(cmd, cwd=tmp, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


def losses(run: Path, stage: str) -> list[float]:
    return [h["loss"] for h in json.loads((run / stage / "log_history.json").read_text()) if "loss" in h]


def wandb_files(run: Path) -> list[Path]:
    return sorted(run.glob("wandb/offline-run-*/run-*.wandb"))


def test_tiny_sft_dpo_end_to_end_then_skip(tmp_path, cache_dir, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", "hf_e2e_secret_value")  # reaches TRL through an interpolation, never the files
    out = alignlab(tmp_path, cache_dir, "run.id=e2e", "+algo.dpo.extra.hub_token=${oc.env:HF_TOKEN}").stdout
    run = tmp_path / "runs" / "tiny" / "e2e"
    for stage in ("sft", "dpo"):
        assert (run / stage / "DONE").is_file() and (run / stage / "model" / "model.safetensors").is_file()
    dpo = json.loads((run / "dpo" / "metrics.json").read_text())
    assert dpo["final/rewards/accuracies"] > 0.9, dpo
    assert losses(run, "dpo")[-1] < 0.5 * losses(run, "dpo")[0]
    if sys.platform.startswith("linux"):  # each stage's own peak resident memory (devices.PeakMemory)
        sft = json.loads((run / "sft" / "metrics.json").read_text())
        assert 100 < sft["memory/peak_rss_mib"] < 16384 and 100 < dpo["memory/peak_rss_mib"] < 16384
        assert 50 < dpo["memory/start_rss_mib"] <= sft["memory/peak_rss_mib"] + 64  # what SFT left, not more
        assert "memory/peak_rss_mib" in (run / "summary.json").read_text()

    info = json.loads((run / "run_info.json").read_text())
    assert info["seed"] == 42 and info["versions"]["trl"] and "run.id=e2e" in info["command"]
    assert "git" in info and info["data"][0]["rows_kept"] == 56
    frozen = (run / "config.yaml").read_text()
    assert "beta: 0.1" in frozen and "loss_type: sigmoid" in frozen

    # W&B: one offline run, stage-namespaced TRL metric names, the resolved config attached
    (first,) = wandb_files(run)
    keys = history_keys(first)
    for key in (
        "dpo/rewards/chosen",
        "dpo/rewards/rejected",
        "dpo/rewards/accuracies",
        "dpo/rewards/margins",
        "dpo/logps/chosen",
        "dpo/logps/rejected",
        "dpo/loss",
        "sft/loss",
        "dpo/global_step",
    ):
        assert key in keys, key
    cfg = wandb_config(first)
    assert cfg["algo"]["dpo"]["beta"] == 0.1 and cfg["pipeline"]["stages"] == ["sft", "dpo"]

    for path in (run / "config.yaml", first, run / "run_info.json"):
        assert b"hf_e2e_secret_value" not in path.read_bytes(), path

    # The same command again: nothing is retrained and no W&B run is opened; had the run started with other code,
    # the reuse is said (the id hashes the config, not the code)
    assert "reused as the old code made them" not in " ".join(out.split())
    started = info["git"]["alignlab"]
    info["git"]["alignlab"] = "0" * 40
    (run / "run_info.json").write_text(json.dumps(info))
    before = (run / "dpo" / "metrics.json").stat().st_mtime_ns
    out = alignlab(tmp_path, cache_dir, "run.id=e2e", "+algo.dpo.extra.hub_token=${oc.env:HF_TOKEN}").stdout
    assert "sft: already done, skipped" in out and "dpo: already done, skipped" in out
    if started:  # a git checkout (CI's editable install is one)
        said = " ".join(out.split())
        assert f"alignlab at commit {'0' * 40}" in said and "stages (sft, dpo) are reused" in said
    attempts = [json.loads(line) for line in (run / "attempts.jsonl").read_text().splitlines()]
    assert [a["git"] for a in attempts] == [started, started]
    assert (run / "dpo" / "metrics.json").stat().st_mtime_ns == before
    assert wandb_files(run) == [first]  # a finished run opens no new W&B run (an interrupted one continues its id)


def test_sigkill_mid_dpo_resumes_to_the_same_result(tmp_path, cache_dir):
    common = ["algo.dpo.save_steps=2"]
    alignlab(tmp_path, cache_dir, "run.id=straight", *common)
    proc = alignlab(tmp_path, cache_dir, "run.id=killed", *common, background=True)
    run = tmp_path / "runs" / "tiny" / "killed"
    deadline = time.time() + 300
    while not (run / "dpo" / "checkpoints" / "checkpoint-12" / COMPLETE).is_file():
        assert proc.poll() is None, "the run ended before it could be killed"
        assert time.time() < deadline
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (run / "dpo" / "DONE").exists()
    sft_done = (run / "sft" / "DONE").stat().st_mtime_ns

    out = alignlab(tmp_path, cache_dir, "run.id=killed", *common).stdout
    assert "sft: already done, skipped" in out and "dpo: resuming from checkpoint-" in out
    assert (run / "sft" / "DONE").stat().st_mtime_ns == sft_done

    straight = tmp_path / "runs" / "tiny" / "straight"
    assert losses(run, "dpo") == pytest.approx(losses(straight, "dpo"), abs=1e-6)
    resumed = json.loads((run / "dpo" / "metrics.json").read_text())
    reference = json.loads((straight / "dpo" / "metrics.json").read_text())
    assert resumed["resumed_from"].startswith("checkpoint-")
    assert resumed["final_step_loss"] == pytest.approx(reference["final_step_loss"], abs=1e-6)
    a = load_file(run / "dpo" / "model" / "model.safetensors")
    b = load_file(straight / "dpo" / "model" / "model.safetensors")
    assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)
    assert len({p.stem for p in wandb_files(run)}) == 1  # one W&B run id across the kill


def test_a_soup_stage_keeps_the_mean_of_its_members_and_resumes_member_by_member(tmp_path, cache_dir):
    alignlab(tmp_path, cache_dir, "run.id=soup", "algo.dpo.soup=2")
    run = tmp_path / "runs" / "tiny" / "soup"
    dpo = run / "dpo"
    members = [load_file(dpo / "members" / str(k) / "model" / "model.safetensors") for k in (0, 1)]
    soup = load_file(dpo / "model" / "model.safetensors")
    assert any(not torch.equal(members[0][k], members[1][k]) for k in soup)  # seeds 42 and 43 trained apart
    for k, v in soup.items():
        assert torch.allclose(v.float(), (members[0][k].float() + members[1][k].float()) / 2, atol=1e-2, rtol=1e-2)
    metrics = json.loads((dpo / "metrics.json").read_text())
    assert metrics["soup/members"] == 2 and metrics["member0/global_step"] == metrics["member1/global_step"] > 0
    assert metrics["member1/final/rewards/accuracies"] > 0.9
    assert losses(run / "dpo" / "members", "1")  # each member's own curve
    keys = history_keys(wandb_files(run)[0])
    assert {"dpo-member0/loss", "dpo-member1/loss"} <= keys

    # interrupted after member 0: only member 1 trains again, and the soup comes out the same
    (dpo / "DONE").unlink()
    shutil.rmtree(dpo / "model")
    shutil.rmtree(dpo / "members" / "1")
    first = (dpo / "members" / "0" / "model" / "model.safetensors").stat().st_mtime_ns
    out = alignlab(tmp_path, cache_dir, "run.id=soup", "algo.dpo.soup=2").stdout
    assert "dpo-member0: done, kept" in out
    assert (dpo / "members" / "0" / "model" / "model.safetensors").stat().st_mtime_ns == first
    again = load_file(dpo / "model" / "model.safetensors")
    assert all(torch.allclose(again[k], soup[k], atol=1e-6) for k in soup)


def test_changed_data_is_refused_and_nothing_lost(tmp_path, cache_dir):
    data = tmp_path / "pairs.jsonl"
    rows = [{"prompt": f"Q{i}?", "chosen": f"A{i}.", "rejected": "No."} for i in range(8)]
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    args = [
        "run.id=data",
        "data=local",
        f"data.preference.path={data}",
        "pipeline=sft",
        "algo.sft.max_steps=2",
        "logger=none",
    ]
    alignlab(tmp_path, cache_dir, *args)
    run = tmp_path / "runs" / "tiny" / "data"
    snapshot = {p: p.read_bytes() for p in run.rglob("*") if p.is_file()}
    data.write_text(data.read_text().replace("A3.", "B3."))
    env = {**os.environ, "ALIGNLAB_CACHE": str(cache_dir)}
    proc = subprocess.run(
        [sys.executable, "-m", "alignlab.cli", "run", "experiment=tiny", f"run.root={tmp_path / 'runs'}", *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=300,
    )
    assert proc.returncode == 2 and "changed since run" in proc.stderr and "Traceback" not in proc.stderr
    for path, content in snapshot.items():
        assert path.read_bytes() == content
    assert "changed since run" in (run / "error.log").read_text()


def test_lora_sft_dpo_saves_merged_models(tmp_path, cache_dir):
    alignlab(
        tmp_path,
        cache_dir,
        "run.id=lora",
        "model.lora.enabled=true",
        "model.lora.r=4",
        "algo.sft.max_steps=3",
        "algo.dpo.max_steps=3",
        "logger=none",
    )
    run = tmp_path / "runs" / "tiny" / "lora"
    for stage in ("sft", "dpo"):
        model = run / stage / "model"
        assert (model / "model.safetensors").is_file() and not (model / "adapter_config.json").exists()
    assert "lora" not in "".join(load_file(run / "dpo" / "model" / "model.safetensors"))


def test_a_run_folder_keeps_its_config_and_refuses_another(tmp_path, cache_dir):
    """A fixed run.id started again with other settings is refused (it used to skip as done and rewrite
    inputs.json); an edited frozen config is refused on resume. Nothing of the first run changes."""
    short = ["run.id=fixed", "algo.sft.max_steps=2", "algo.dpo.max_steps=2"]
    alignlab(tmp_path, cache_dir, *short)
    run = tmp_path / "runs" / "tiny" / "fixed"
    before = {p: p.read_bytes() for p in (run / "config.yaml", run / "inputs.json", run / "dpo" / "metrics.json")}
    env = {**os.environ, "ALIGNLAB_CACHE": str(cache_dir)}
    base = [sys.executable, "-m", "alignlab.cli"]
    again = subprocess.run(
        [*base, "run", "experiment=tiny", f"run.root={tmp_path / 'runs'}", *short, "algo.dpo.beta=0.3"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert again.returncode == 2 and "exists with a different config (algo.dpo.beta: 0.1 -> 0.3" in again.stderr
    assert {p: p.read_bytes() for p in before} == before
    (run / "config.yaml").write_text((run / "config.yaml").read_text().replace("seed: 42", "seed: 43"))
    resumed = subprocess.run([*base, "resume", str(run)], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert resumed.returncode == 2 and "was edited or damaged after the run started" in resumed.stderr, resumed.stderr[
        -2000:
    ]
