"""Settings chosen per device where config says `auto` (devices.py): precision, gradient checkpointing from the
memory estimate, the training attention kernel; and bf16 autocast's loss curve against fp32's."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest
import torch
from conftest import REPO
from stage_fixtures import context
from transformers import AutoConfig, AutoModelForCausalLM, LlamaConfig

from alignlab import cli, devices
from alignlab.training import trainer

CPU, CUDA = torch.device("cpu"), torch.device("cuda", 0)


def test_auto_precision_follows_the_devices_bf16_units(monkeypatch):
    monkeypatch.setattr(devices, "bf16_native", lambda device: True)
    assert devices.resolve_precision("auto", CPU) == "bf16"
    monkeypatch.setattr(devices, "bf16_native", lambda device: False)
    assert devices.resolve_precision("auto", CPU) == "fp32"
    assert devices.resolve_precision("auto", CUDA) == "fp16"
    assert devices.resolve_precision("fp32", CUDA) == "fp32"  # an explicit choice is kept


def test_auto_precision_keeps_full_finetuning_at_small_learning_rates_in_fp32(monkeypatch):
    monkeypatch.setattr(devices, "bf16_native", lambda device: True)
    assert devices.resolve_precision("auto", CPU, learning_rate=1e-6, full_finetune=True) == "fp32"
    assert devices.resolve_precision("auto", CPU, learning_rate=1e-6, full_finetune=False) == "bf16"  # LoRA
    assert devices.resolve_precision("auto", CPU, learning_rate=1e-3, full_finetune=True) == "bf16"
    assert devices.resolve_precision("bf16", CPU, learning_rate=1e-6, full_finetune=True) == "bf16"


def test_training_attention_is_eager_on_a_cpu_and_the_models_own_on_a_gpu():
    assert devices.resolve_attention("auto", "sdpa", CPU) == "eager"
    assert devices.resolve_attention("auto", "flash_attention_2", CUDA) == "flash_attention_2"
    assert devices.resolve_attention("sdpa", "sdpa", CPU) == "sdpa"


@pytest.mark.parametrize("tied", [True, False])
def test_parameter_count_from_a_config_matches_the_model(tied):
    config = LlamaConfig(
        hidden_size=96,
        intermediate_size=256,
        num_hidden_layers=3,
        num_attention_heads=6,
        num_key_value_heads=2,
        vocab_size=500,
        tie_word_embeddings=tied,
    )
    real = sum(p.numel() for p in AutoModelForCausalLM.from_config(config).parameters())
    norms = (2 * 3 + 1) * 96  # RMSNorm weights, left out of the estimate
    assert devices.parameter_count(config) == real - norms


def test_checkpointing_turns_on_only_when_the_estimate_does_not_fit(tmp_path, cache_dir, monkeypatch, capsys):
    ctx = context(tmp_path, "dpo", "pipeline=dpo")
    assert trainer.gradient_checkpointing(ctx, "fp32") is False
    assert "gradient checkpointing off" in capsys.readouterr().out
    needed = devices.estimate_training_memory(
        AutoConfig.from_pretrained(ctx.input_model),
        rows=16,
        tokens_per_row=trainer.longest_row(ctx),
        precision="fp32",
        full_finetune=True,
        reference_copy=False,
    )
    monkeypatch.setattr(
        devices, "available_bytes", lambda device: (needed.states + needed.activations + needed.logits) // 2
    )
    assert trainer.gradient_checkpointing(ctx, "fp32") is True
    assert "gradient checkpointing on" in capsys.readouterr().out
    explicit = context(tmp_path / "b", "dpo", "pipeline=dpo", "algo.dpo.gradient_checkpointing=false")
    assert trainer.gradient_checkpointing(explicit, "fp32") is False


def test_the_estimate_counts_what_zero_shards_and_lora_does_not_train():
    config = AutoConfig.for_model(
        "llama",
        hidden_size=2048,
        intermediate_size=8192,
        num_hidden_layers=16,
        num_attention_heads=32,
        vocab_size=128256,
    )
    full = devices.estimate_training_memory(config, 8, 1024, "bf16", full_finetune=True, reference_copy=True)
    lora = devices.estimate_training_memory(config, 8, 1024, "bf16", full_finetune=False, reference_copy=False)
    zero3 = devices.estimate_training_memory(
        config, 8, 1024, "bf16", full_finetune=True, reference_copy=True, zero_stage=3, world=8
    )
    p = devices.parameter_count(config)
    assert full.states == 4 * p + 2 * p + 4 * p + 8 * p + 4 * p  # weights, bf16 copies, grads, Adam, reference
    assert lora.states == 4 * p + 2 * p
    assert zero3.states == (4 * p + 4 * p + 8 * p) // 8 + 2 * p + 4 * p
    assert full.checkpointed_activations < full.activations / 10


def test_freed_memory_setting_is_harmless(monkeypatch):
    devices.keep_freed_memory()
    monkeypatch.setenv("ALIGNLAB_KEEP_FREED_MEMORY", "0")
    devices.keep_freed_memory()
    assert torch.ones(64 << 20, dtype=torch.uint8).sum().item() == 64 << 20  # large blocks still allocate


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="/proc and glibc's malloc_trim are Linux's")
def test_a_stage_reports_its_own_peak_and_hands_freed_heap_back():
    """In a fresh process (the tests' own has other memory around): with keep_freed_memory on, as in every run, 512
    MiB freed below a live block stays resident until release_freed_memory; a stage's peak counts what that stage
    allocated, not what an earlier one did."""
    script = textwrap.dedent("""
        import json, psutil, torch
        from alignlab import devices
        devices.keep_freed_memory()
        rss = lambda: psutil.Process().memory_info().rss / 2**20
        first = devices.PeakMemory()
        base = rss()
        blocks = [torch.ones(4 << 20) for _ in range(32)]  # 32 x 16 MiB from the heap
        top = torch.ones(1 << 10)  # allocated after them: the freed blocks are not at the heap's top
        del blocks
        held = rss()
        peak_first = first.metrics()["memory/peak_rss_mib"]
        devices.release_freed_memory()
        released = rss()
        second = devices.PeakMemory()
        small = torch.ones(1 << 20)
        print(json.dumps({"base": base, "held": held, "released": released, "peak_first": peak_first,
                          "peak_second": second.metrics()["memory/peak_rss_mib"]}))
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    m = json.loads(out.stdout.strip().splitlines()[-1])
    assert m["held"] - m["base"] > 400  # freed, but kept for a next training step
    assert m["released"] - m["base"] < 100  # handed back between stages
    assert m["peak_first"] - m["base"] > 500
    assert m["peak_second"] < m["peak_first"] - 400  # the second stage's peak is its own


@pytest.mark.slow
@pytest.mark.skipif(not devices.bf16_native(CPU), reason="this CPU has no bf16 units: auto is fp32 here")
def test_bf16_autocast_keeps_the_dpo_loss_curve_of_fp32(tmp_path, cache_dir, monkeypatch):
    """The tiny experiment's DPO stage, 8 steps, with precision auto (bf16 here) and fp32 from the same SFT model:
    every step's loss within 0.02 of fp32's (the tolerance the README states)."""
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    losses = {}
    for precision in ("auto", "fp32"):
        root = tmp_path / precision
        args = [
            "run",
            "experiment=tiny",
            "logger=none",
            f"run.root={root}",
            "algo.sft.max_steps=6",
            "algo.dpo.max_steps=8",
            "algo.dpo.epochs=2",
            f"algo.dpo.precision={precision}",
        ]
        assert cli.main(args) == 0
        (history,) = root.glob("tiny/*/dpo/log_history.json")
        losses[precision] = [h["loss"] for h in json.loads(history.read_text()) if "loss" in h]
    assert len(losses["auto"]) == 8
    diff = max(abs(a - b) for a, b in zip(losses["auto"], losses["fp32"]))
    assert diff < 0.02, (losses, diff)


@pytest.mark.slow
def test_the_dpo_benchmark_runs_end_to_end_on_a_model_from_a_config(tmp_path, cache_dir, tiny_model):
    """benchmarks/dpo_speed.py on a random model of a config's shape (its GPU mode's path, here on the CPU) and the
    tiny pairs: every row trains, the table has a ratio for each of ours, the profile prints its operators, and the
    saved results print the same table again; its scratch folder (GBs on a real model) is gone afterwards."""
    import os
    import subprocess
    import sys

    from alignlab.models import TINY_CORPUS

    config = tmp_path / "config.json"
    config.write_text(
        json.dumps(
            {
                "model_type": "llama",
                "hidden_size": 64,
                "intermediate_size": 128,
                "num_hidden_layers": 2,
                "num_attention_heads": 4,
                "vocab_size": 384,
            }
        )
    )
    out, scratch = tmp_path / "result.json", tmp_path / "tmp"
    scratch.mkdir()
    script = REPO / "benchmarks" / "dpo_speed.py"
    run = subprocess.run(
        [
            sys.executable,
            str(script),
            "--policy",
            tiny_model,
            "--model-config",
            str(config),
            "--pairs",
            str(TINY_CORPUS),
            "--steps",
            "3",
            "--batch-size",
            "2",
            "--threads",
            "1",
            "--rows",
            "trl",
            "ours",
            "trl-lora",
            "ours-lora",
            "--json",
            str(out),
            "--profile",
        ],
        capture_output=True,
        text=True,
        timeout=900,
        env={**os.environ, "TMPDIR": str(scratch)},
    )
    assert run.returncode == 0, run.stderr[-3000:]
    assert not list(scratch.glob("dpo-speed-*"))
    table = [line for line in run.stdout.splitlines() if line.startswith("| ours")]
    assert len(table) == 2 and all(line.rstrip(" |").endswith("x") for line in table), run.stdout
    rows = json.loads(out.read_text())["rows"]
    assert all(len(r["losses"]) == 3 and r["seconds_per_step"] > 0 for r in rows.values())
    assert rows["ours"]["ref_pass_seconds"] > 0 and rows["trl"]["ref_pass_seconds"] is None
    assert run.stdout.count("top operators by self CPU time") == 4 and "aten::" in run.stdout
    again = subprocess.run([sys.executable, str(script), "--table", str(out)], capture_output=True, text=True)
    assert again.returncode == 0 and [x for x in again.stdout.splitlines() if x.startswith("| ours")] == table
