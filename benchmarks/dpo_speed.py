"""DPO steps per second: alignlab's DPO stage against stock TRL 1.16 DPOTrainer, same model, pairs, batch and steps.

One process series on one machine: each row runs in its own process (so peak memory is per row), one after the
other, with the same torch thread count, and the driver prints one table.

    .venv/bin/python benchmarks/dpo_speed.py                      # SmolLM2-135M-Instruct, 4 pairs a step, 8 steps
    .venv/bin/python benchmarks/dpo_speed.py --rows trl-lora ours-lora --steps 12
    .venv/bin/python benchmarks/dpo_speed.py --device cuda --model-config benchmarks/models/llama-1b.json \\
        --batch-size 16 --steps 20                               # a GPU row: bf16, SDPA, a larger model

Rows:
- `trl` / `trl-lora`: stock `trl.DPOTrainer` as a new user writes it: `DPOConfig` defaults (bf16 autocast and
  gradient checkpointing, also on a CPU), a separate reference copy (full fine-tuning) or LoRA r 16 on every linear
  layer (reference = adapter off), the same learning rate, batch, steps and seed as ours.
- `ours` / `ours-lora`: alignlab's DPO stage (stages/dpo.py) with its defaults: precision, checkpointing and
  training attention `auto` (devices.py: at TRL's default learning rate of 1e-6, full fine-tuning stays fp32, which
  bf16 cannot follow; LoRA takes bf16), our LM head and prompt sharing on a CPU (training/lm_head.py), and reference
  log-probabilities precomputed through the run-tree cache (training/ref_cache.py), which starts empty in each row
  (the `ref pass` column; a later run with the same reference and pairs skips it).
- `ours-bf16`: `ours` in bf16 autocast, TRL's precision. `ours-same-batches` / `ours-lora-same-batches`: bf16 with
  `algo.dpo.group_by_length=false`, so that every step sees the pairs TRL's step sees (the like-for-like loss
  comparison; our default groups pairs by length). `ours-lora-fp32`: `ours-lora` in fp32.
The data: the default experiment's on-policy pairs (`alignlab run experiment=safety-smollm pipeline.stages=[pairs]`,
made once and cached), the first `steps x batch` of them, so every row trains one epoch, in the same seeded order.
The first step is warm-up and not timed; `s / step` is the median of the others. `tokens/s` counts every prompt and
reply token of both rows of a pair (the work, whatever an implementation pads or shares). `TFLOP/s` is the model's
useful work (policy forward and backward, reference forward: 2 x matmul parameters x tokens per pass, plus attention
scores; recomputation not credited; a reference pass before the first step neither) over the step time; `% of peak`
is that against this machine's measured matrix-multiply rate in the row's precision (the practical ceiling).
"""

from __future__ import annotations

import argparse
import atexit
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
ROWS = (
    "trl",
    "trl-lora",
    "ours",
    "ours-bf16",
    "ours-same-batches",
    "ours-lora",
    "ours-lora-same-batches",
    "ours-lora-fp32",
)


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--policy", type=Path, help="causal LM folder (default: SmolLM2-135M-Instruct, converted once)")
    p.add_argument("--model-config", type=Path, help="a config.json: a randomly initialised model of that shape")
    p.add_argument("--pairs", type=Path, help="preference pairs (.jsonl); default: the default experiment's")
    p.add_argument("--batch-size", type=int, default=4, help="pairs per step")
    p.add_argument("--steps", type=int, default=8, help="steps per row; the first is not timed")
    p.add_argument("--learning-rate", type=float, default=1e-6, help="TRL's DPOConfig default")
    p.add_argument("--rows", nargs="+", choices=ROWS, default=list(ROWS))
    p.add_argument(
        "--repeats",
        type=int,
        default=1,
        help="run the series this many times, interleaved, and keep each row's fastest median step",
    )
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    p.add_argument("--threads", type=int, default=os.cpu_count(), help="torch threads, the same for every row")
    p.add_argument("--json", type=Path, help="also write the results here")
    p.add_argument("--table", type=Path, help="print the table of a --json file written earlier, run nothing")
    p.add_argument(
        "--profile",
        action="store_true",
        help="torch.profiler over steps 2-4 (or to the last) of each row: its top operators by self time",
    )
    p.add_argument("--side", help=argparse.SUPPRESS)
    p.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    return p.parse_args()


# ------------------------------------------------------------------------------------------------ inputs (driver)
def scratch(prefix: str) -> Path:
    """A temporary folder removed when the script exits, however it exits short of a kill: one series writes GBs
    (models, checkpoints), and a few benchmark runs left behind once filled this machine's disk."""
    work = Path(tempfile.mkdtemp(prefix=prefix))
    atexit.register(shutil.rmtree, work, ignore_errors=True)
    return work


def smollm2() -> Path:
    from omegaconf import OmegaConf

    from alignlab.config import compose_config
    from alignlab.models import cache_root, resolve_model_path

    cfg = compose_config(["experiment=safety-smollm"])
    return Path(resolve_model_path(OmegaConf.create(OmegaConf.to_container(cfg.model)), cache_root()))


def random_model(config_file: Path, tokenizer_from: Path, out: Path) -> Path:
    """A model of the shape in `config_file`, random weights (no Hub), with SmolLM2's tokenizer."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    if (out / "config.json").is_file():
        return out
    torch.manual_seed(0)
    config = AutoConfig.for_model(**json.loads(config_file.read_text()))
    AutoModelForCausalLM.from_config(config, dtype=torch.float32).save_pretrained(out)
    AutoTokenizer.from_pretrained(tokenizer_from).save_pretrained(out)
    return out


def default_pairs(work: Path) -> Path:
    """The default experiment's on-policy pairs, made once by its own pairs stage."""
    from alignlab.models import cache_root

    out = cache_root() / "benchmarks" / "safety-smollm-pairs.jsonl"
    if not out.is_file():
        root = work / "pairs-run"
        subprocess.run(
            [
                str(REPO / ".venv/bin/alignlab"),
                "run",
                "experiment=safety-smollm",
                "pipeline.stages=[pairs]",
                "logger=none",
                f"run.root={root}",
            ],
            check=True,
        )
        (made,) = root.glob("*/*/pairs/pairs.jsonl")
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(made.read_text())
    return out


def matmul_rates(device: str) -> dict[str, float]:
    """GFLOP/s of a 2048^3 matrix product in bf16 and fp32: the practical ceiling of this machine."""
    import torch

    n, rates = 2048, {}
    for name, dtype in (("bf16", torch.bfloat16), ("fp32", torch.float32)):
        a = torch.randn(n, n, device=device, dtype=dtype)
        b = torch.randn(n, n, device=device, dtype=dtype)
        best, started = float("inf"), time.perf_counter()
        # Up to 10 products, but no more than ~2 s of them: a CPU without bf16 units takes about a minute for one.
        for _ in range(10):
            sync(device)
            t = time.perf_counter()
            a @ b
            sync(device)
            best = min(best, time.perf_counter() - t)
            if time.perf_counter() - started > 2.0:
                break
        rates[name] = 2 * n**3 / best / 1e9
    return rates


def sync(device: str) -> None:
    import torch

    if device == "cuda":
        torch.cuda.synchronize()


# ------------------------------------------------------------------------------------------------ one row (child)
class StepTimer:
    """A TrainerCallback that times each optimizer step (forward, backward, optimizer); with `profile`, it runs
    torch.profiler over steps 2-4 (or to the last) and keeps the operator table (where a step's time goes)."""

    def __init__(self, device: str, profile: bool = False):
        import torch
        from transformers import TrainerCallback

        timer = self
        self.profiler = torch.profiler.profile() if profile else None
        self.table = ""

        class Callback(TrainerCallback):
            def on_step_begin(self, args, state, control, **kw):
                if timer.profiler is not None and state.global_step == 1:
                    timer.profiler.start()
                sync(device)
                timer.started = time.perf_counter()

            def on_step_end(self, args, state, control, **kw):
                sync(device)
                timer.seconds.append(time.perf_counter() - timer.started)
                if timer.profiler is not None and state.global_step == min(4, state.max_steps):
                    timer.profiler.stop()
                    averages = timer.profiler.key_averages()
                    timer.table = averages.table(sort_by="self_cpu_time_total", row_limit=15, max_name_column_width=48)

        self.seconds: list[float] = []
        self.callback = Callback()


def rows_of(pairs: Path, n: int) -> list[dict[str, Any]]:
    rows = [json.loads(line) for line in pairs.read_text().splitlines() if line.strip()]
    if len(rows) < n:
        sys.exit(f"dpo_speed: {pairs} has {len(rows)} pairs, {n} needed (steps x batch size)")
    return [{k: r[k] for k in ("prompt", "chosen", "rejected")} for r in rows[:n]]


def run_trl(args: argparse.Namespace, lora: bool) -> tuple[Any, StepTimer, float]:
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import DPOConfig, DPOTrainer

    tok = AutoTokenizer.from_pretrained(args.policy)
    tok.pad_token = "<|endoftext|>" if "<|endoftext|>" in tok.get_vocab() else tok.eos_token
    model = AutoModelForCausalLM.from_pretrained(args.policy, dtype=torch.float32)
    ref = None if lora else AutoModelForCausalLM.from_pretrained(args.policy, dtype=torch.float32)
    config = DPOConfig(
        output_dir=str(args.out.parent / "trl"),
        per_device_train_batch_size=args.batch_size,
        max_steps=args.steps,
        learning_rate=args.learning_rate,
        logging_steps=1,
        save_strategy="no",
        report_to=[],
        seed=0,
        data_seed=0,
        use_cpu=args.device == "cpu",
    )
    peft = LoraConfig(r=16, lora_alpha=32, lora_dropout=0.0, target_modules="all-linear", task_type="CAUSAL_LM")
    timer = StepTimer(args.device, args.profile)
    started = time.perf_counter()
    trainer = DPOTrainer(
        model=model,
        ref_model=ref,
        args=config,
        processing_class=tok,
        train_dataset=Dataset.from_list(rows_of(args.pairs, args.steps * args.batch_size)),
        peft_config=peft if lora else None,
        callbacks=[timer.callback],
    )
    setup = time.perf_counter() - started
    trainer.train()
    return trainer, timer, setup


def run_ours(args: argparse.Namespace, lora: bool, precision: str, grouped: bool) -> tuple[Any, StepTimer, float]:
    """The stage itself on the same pairs: built from config like `alignlab run pipeline=dpo data=local ...`."""
    from alignlab.config import compose_config, validate
    from alignlab.pipeline import prepare
    from alignlab.stages import dpo
    from alignlab.tracking import Tracker
    from alignlab.training.context import StageContext
    from alignlab.training.trainer import train

    work = args.out.parent
    pairs = work / "pairs.jsonl"
    pairs.write_text("".join(json.dumps(r) + "\n" for r in rows_of(args.pairs, args.steps * args.batch_size)))
    overrides = [
        "experiment=tiny",
        "logger=none",
        "model.source=local",
        f"model.path={args.policy}",
        f"run.root={work}",
        "pipeline=dpo",
        "data=local",
        f"data.preference.path={pairs}",
        "data.on_duplicate=keep",
        f"algo.dpo.batch_size={args.batch_size}",
        f"algo.dpo.max_steps={args.steps}",
        "algo.dpo.epochs=1",
        f"algo.dpo.learning_rate={args.learning_rate}",
        f"algo.dpo.precision={precision}",
        "algo.dpo.save_steps=1000000",
        "algo.dpo.final_eval=false",
        "seed=0",
        f"algo.dpo.group_by_length={str(grouped).lower()}",
        f"model.lora.enabled={str(lora).lower()}",
        "model.lora.r=16",
        "model.lora.alpha=32",
        "model.lora.dropout=0.0",
    ]
    cfg = validate(compose_config(overrides))
    prep = prepare(cfg)
    ctx = StageContext(
        cfg, "dpo", work / "dpo", prep.base_model, prep.base_model, prep.tokenizer, prep.pairs, None, Tracker(cfg, work)
    )
    ctx.stage_dir.mkdir(parents=True)
    timer = StepTimer(args.device, args.profile)
    started = time.perf_counter()
    trainer = dpo.build_trainer(ctx)  # the reference pass runs here (an empty cache: this row scores every pair)
    setup = time.perf_counter() - started
    trainer.add_callback(timer.callback)
    train(trainer, ctx)
    return trainer, timer, setup


def child(args: argparse.Namespace) -> None:
    import torch

    torch.set_num_threads(args.threads)
    lora = "lora" in args.side
    if args.side.startswith("trl"):
        trainer, timer, setup = run_trl(args, lora)
        ref_pass = None  # TRL runs its reference forward inside every step
    else:
        precision = {"ours-lora-fp32": "fp32", "ours": "auto", "ours-lora": "auto"}.get(args.side, "bf16")
        trainer, timer, setup = run_ours(args, lora, precision, grouped="same-batches" not in args.side)
        ref_pass = trainer.ref_stats["ref_logps/seconds"]
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    if args.device == "cuda":
        peak = torch.cuda.max_memory_allocated() / 2**20
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    timed = sorted(timer.seconds[1:])
    args.out.write_text(
        json.dumps(
            {
                "seconds_per_step": timed[len(timed) // 2],  # the median: neighbours on this machine make steps noisy
                "step_seconds": timer.seconds,
                "setup_seconds": setup,
                "ref_pass_seconds": ref_pass,
                "losses": losses,
                "peak_mib": peak,
                "precision": "bf16" if trainer.args.bf16 else "fp32",
                "gradient_checkpointing": bool(trainer.args.gradient_checkpointing),
                "attention": trainer.model.config._attn_implementation,
                "profile": timer.table,
            },
            indent=2,
        )
    )


# ------------------------------------------------------------------------------------------------ the table (driver)
def workload(policy: Path, pairs: Path, n: int) -> dict[str, float]:
    """Tokens per step (every prompt and reply token of both rows) and model FLOPs per token of one forward pass."""
    from transformers import AutoConfig, AutoTokenizer

    from alignlab.devices import parameter_count

    tok = AutoTokenizer.from_pretrained(policy)
    config = AutoConfig.from_pretrained(policy).get_text_config()
    tokens, squares = 0, 0
    for r in rows_of(pairs, n):
        for reply in ("chosen", "rejected"):
            t = len(tok.apply_chat_template(r["prompt"] + r[reply], tokenize=True, return_dict=False))
            tokens += t
            squares += t * t
    embeddings = config.vocab_size * config.hidden_size
    matmul_params = parameter_count(config) - (0 if config.tie_word_embeddings else embeddings)
    # per token: 2 FLOPs per matmul weight, plus QK^T and AV over the causal context (mean t/2 keys per query)
    attention = 2 * 2 * config.num_hidden_layers * config.hidden_size * (squares / tokens) / 2
    return {"tokens": tokens, "forward_flops_per_token": 2 * matmul_params + attention}


def driver(args: argparse.Namespace) -> None:
    work = scratch("dpo-speed-")
    args.policy = args.policy or smollm2()
    if args.model_config:
        args.policy = random_model(args.model_config, args.policy, work / "model")
    args.pairs = args.pairs or default_pairs(work)
    n = args.steps * args.batch_size
    load = workload(args.policy, args.pairs, n)
    import torch

    torch.set_num_threads(args.threads)
    peaks = matmul_rates(args.device)
    results: dict[str, Any] = {}
    for repeat, row in ((k, r) for k in range(args.repeats) for r in args.rows):
        out = work / f"{row}-{repeat}" / "result.json"
        out.parent.mkdir(parents=True)
        cmd = [
            sys.executable,
            __file__,
            "--side",
            row,
            "--out",
            str(out),
            "--policy",
            str(args.policy),
            "--pairs",
            str(args.pairs),
            "--batch-size",
            str(args.batch_size),
            "--steps",
            str(args.steps),
            "--learning-rate",
            str(args.learning_rate),
            "--device",
            args.device,
            "--threads",
            str(args.threads),
            *(["--profile"] if args.profile else []),
        ]
        env = {
            **os.environ,
            "PYTHONPATH": str(REPO / "src"),
            "TQDM_DISABLE": "1",
            "WANDB_MODE": "disabled",
            "ALIGNLAB_CACHE": os.environ.get("ALIGNLAB_CACHE", str(Path.home() / ".cache" / "alignlab")),
        }
        print(f"[dpo_speed] {row} (series {repeat + 1} of {args.repeats}) ...", flush=True)
        subprocess.run(cmd, check=True, env=env, stdout=subprocess.DEVNULL)
        result = json.loads(out.read_text())
        if row not in results or result["seconds_per_step"] < results[row]["seconds_per_step"]:
            results[row] = result
    print_table(args, load, peaks, results)
    if args.json:
        saved = {
            "workload": load,
            "matmul_gflops": peaks,
            "rows": results,
            "policy": str(args.policy),
            **{k: getattr(args, k) for k in ("batch_size", "steps", "repeats", "threads", "device")},
        }
        args.json.write_text(json.dumps(saved, indent=2))


def print_table(args: argparse.Namespace, load: dict[str, float], peaks: dict[str, float], results: dict) -> None:
    tokens_per_step = load["tokens"] / args.steps
    print(
        f"\n{args.policy.name}, {args.batch_size} pairs a step ({tokens_per_step:.0f} tokens), {args.steps} steps "
        f"(first untimed), best of {args.repeats} series, {args.threads} threads, {args.device}; "
        f"matmul 2048^3: bf16 {peaks['bf16']:.0f} GFLOP/s, "
        f"fp32 {peaks['fp32']:.0f} GFLOP/s\n"
    )
    head = (
        "| row | precision | ckpt | attention | s / step | tokens / s | ref pass (s) | peak MiB | final loss "
        "| TFLOP/s | % of peak | vs TRL |"
    )
    print(head)
    print("| --- | --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for row, r in results.items():
        lora = "lora" in row
        # policy forward + backward (LoRA: no weight gradients of the base), and the reference forward where the
        # step runs it (ours precomputes it before the first step: the `ref pass` column, not credited here)
        passes = (2 if lora else 3) + (r["ref_pass_seconds"] is None)
        flops = passes * load["forward_flops_per_token"] * tokens_per_step / r["seconds_per_step"] / 1e12
        base = results.get("trl-lora" if lora else "trl")
        ratio = f"{base['seconds_per_step'] / r['seconds_per_step']:.2f}x" if base else "-"
        ref = "-" if r["ref_pass_seconds"] is None else f"{r['ref_pass_seconds']:.1f}"
        peak = peaks[r["precision"]]
        print(
            f"| {row} | {r['precision']} | {'on' if r['gradient_checkpointing'] else 'off'} | {r['attention']} "
            f"| {r['seconds_per_step']:.2f} | {tokens_per_step / r['seconds_per_step']:.0f} | {ref} "
            f"| {r['peak_mib']:.0f} | {r['losses'][-1]:.4f} | {flops:.3f} | {100 * flops * 1e3 / peak:.1f} "
            f"| {ratio} |"
        )
    print("\nlosses per step:")
    for row, r in results.items():
        print(f"  {row}: " + ", ".join(f"{x:.4f}" for x in r["losses"]))
    for row, r in results.items():
        if r.get("profile"):
            print(f"\n{row}: torch.profiler over steps 2-4 (or to the last), top operators by self CPU time")
            print(r["profile"])


def main() -> None:
    args = parse_args()
    if args.table:
        saved = json.loads(args.table.read_text())
        for k in ("batch_size", "steps", "repeats", "threads", "device"):
            setattr(args, k, saved[k])
        args.policy = Path(saved["policy"])
        print_table(args, saved["workload"], saved["matmul_gflops"], saved["rows"])
        return
    if args.side:
        child(args)
        return
    driver(args)


if __name__ == "__main__":
    main()
