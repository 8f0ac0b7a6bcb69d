"""The reference log-probability cache (training/ref_cache.py): computed once per reference model and pairs, reused by
later runs (other betas, seeds, LoRA or not), recomputed for another reference, and shared by a sweep's members."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from stage_fixtures import context
from transformers import AutoModelForCausalLM

from alignlab import cli
from alignlab.models import TINY_CORPUS as TINY_PAIRS
from alignlab.stages import dpo


def cache_files(root: Path) -> list[Path]:
    return sorted((root / ".cache" / "ref_logps").glob("*/logps.json"))


def built(tmp_path: Path, name: str, *overrides: str):
    ctx = context(tmp_path / name, "dpo", "pipeline=dpo", f"run.root={tmp_path}", *overrides)
    trainer = dpo.build_trainer(ctx)
    return ctx, trainer


def test_a_second_run_with_the_same_reference_computes_nothing(tmp_path, cache_dir):
    _, first = built(tmp_path, "a", "algo.dpo.beta=0.1")
    n = len(first.train_dataset)
    assert first.ref_stats["ref_logps/computed_pairs"] == n
    # another beta, loss and seed: the reference term is the same, so every pair comes from the cache
    _, second = built(tmp_path, "b", "algo.dpo.beta=0.5", "algo.dpo.loss_type=ipo", "seed=7")
    assert second.ref_stats["ref_logps/computed_pairs"] == 0
    assert second.ref_stats["ref_logps/cached_pairs"] >= n  # the train pairs and the final-eval subset
    assert len(cache_files(tmp_path)) == 1
    for column in ("ref_chosen_logps", "ref_rejected_logps"):
        assert first.train_dataset[column] == second.train_dataset[column]


def test_cached_values_are_the_reference_models_own(tmp_path, cache_dir):
    _, cached = built(tmp_path, "a")
    _, fresh = built(tmp_path, "b", "algo.dpo.ref_cache=false")
    assert fresh.ref_cache is None
    a, b = cached.train_dataset, fresh.train_dataset
    # the cache stores floats; TRL's own columns come from float32 tensors: equal to the float32 rounding
    torch.testing.assert_close(torch.tensor(a["ref_chosen_logps"]), torch.tensor(b["ref_chosen_logps"]))
    torch.testing.assert_close(torch.tensor(a["ref_rejected_logps"]), torch.tensor(b["ref_rejected_logps"]))


def test_lora_reuses_the_full_models_reference_pass(tmp_path, cache_dir):
    """With LoRA the reference is the base model with the adapter off: the same weights, so the same entry."""
    built(tmp_path, "full")
    _, lora = built(tmp_path, "lora", "model.lora.enabled=true", "model.lora.r=4")
    assert lora.ref_stats["ref_logps/computed_pairs"] == 0


def test_another_reference_model_is_scored_afresh(tmp_path, cache_dir):
    ctx, _ = built(tmp_path, "a")
    other = tmp_path / "other-reference"
    model = AutoModelForCausalLM.from_pretrained(ctx.input_model)
    with torch.no_grad():
        model.lm_head.weight.mul_(1.01)
    model.save_pretrained(other)
    ctx.tokenizer.save_pretrained(other)
    _, trainer = built(tmp_path, "b", f"algo.dpo.reference={other}")
    assert trainer.ref_stats["ref_logps/computed_pairs"] == len(trainer.train_dataset)
    assert len(cache_files(tmp_path)) == 2


def test_only_the_pairs_no_run_scored_are_computed(tmp_path, cache_dir):
    rows = TINY_PAIRS.read_text().splitlines(keepends=True)
    for n in (20, 32):
        (tmp_path / f"first{n}.jsonl").write_text("".join(rows[:n]))
    built(tmp_path, "a", "data=local", f"data.preference.path={tmp_path / 'first20.jsonl'}")
    _, more = built(tmp_path, "b", "data=local", f"data.preference.path={tmp_path / 'first32.jsonl'}")
    assert more.ref_stats["ref_logps/computed_pairs"] == 12


def test_an_unreadable_cache_file_is_recomputed_not_trusted(tmp_path, cache_dir, capsys):
    _, first = built(tmp_path, "a")
    (entry,) = cache_files(tmp_path)
    entry.write_text('{"key": ')  # as if edited by hand
    _, second = built(tmp_path, "b")
    assert second.ref_stats["ref_logps/computed_pairs"] == len(second.train_dataset)
    assert "unreadable; recomputing" in capsys.readouterr().out
    assert json.loads(entry.read_text())["key"] == second.ref_cache.parts
    assert first.train_dataset["ref_chosen_logps"] == second.train_dataset["ref_chosen_logps"]


def test_a_cache_file_edited_by_hand_fails_its_checksum_and_is_recomputed(tmp_path, cache_dir, capsys):
    _, first = built(tmp_path, "a")
    (entry,) = cache_files(tmp_path)
    stored = json.loads(entry.read_text())
    key = next(iter(stored["pairs"]))
    stored["pairs"][key][0] += 5.0  # a tampered value, still valid JSON under the right key
    entry.write_text(json.dumps(stored))
    _, second = built(tmp_path, "b")
    assert second.ref_stats["ref_logps/computed_pairs"] == len(second.train_dataset)
    assert "fails its checksum; recomputing" in capsys.readouterr().out
    assert first.train_dataset["ref_chosen_logps"] == second.train_dataset["ref_chosen_logps"]


@pytest.mark.slow
def test_a_beta_sweep_computes_the_reference_pass_once(tmp_path, cache_dir, monkeypatch):
    """Three members of `alignlab run -m experiment=tiny algo.dpo.beta=...` each train the same SFT model (same seed,
    same data), so their DPO references have the same files: the first member scores the pairs, the others reuse
    them."""
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    args = [
        "run",
        "-m",
        "experiment=tiny",
        "algo.sft.max_steps=3",
        "algo.dpo.max_steps=2",
        "logger=none",
        f"run.root={tmp_path}",
        "algo.dpo.beta=0.05,0.1,0.3",
    ]
    assert cli.main(args) == 0
    runs = [p for p in (tmp_path / "tiny").iterdir() if (p / "dpo" / "DONE").is_file()]
    metrics = [json.loads((r / "dpo" / "metrics.json").read_text()) for r in runs]
    assert len(metrics) == 3
    computed = sorted(m["ref_logps/computed_pairs"] for m in metrics)
    pairs = 56  # the tiny experiment's bundled pairs
    assert computed == [0, 0, pairs]
    assert all(m["ref_logps/cached_pairs"] >= pairs for m in metrics if m["ref_logps/computed_pairs"] == 0)
    shutil.rmtree(tmp_path / ".cache")
