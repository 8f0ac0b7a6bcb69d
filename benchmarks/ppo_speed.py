"""PPO updates per second: alignlab's PPO stage against TRL 1.12's PPOTrainer, same model, batch and reply length.

TRL 1.16 has no PPO; TRL 1.12 (`trl.experimental.ppo.PPOTrainer`, the last release with one) runs in its own venv
(benchmarks/trl112_env.sh) through benchmarks/trl112_ppo.py. This driver runs, one after the other on the same
machine and with the same torch thread count: TRL 1.12, then alignlab's stage in three settings, each in its own
process (so peak memory is per row), and prints one table.

    .venv/bin/python benchmarks/ppo_speed.py                        # SmolLM2-135M-Instruct, batch 8, 32 tokens
    .venv/bin/python benchmarks/ppo_speed.py --steps 4 --batch-size 16 --mini-batch-size 8 --response-length 48
    .venv/bin/python benchmarks/ppo_speed.py --profile          # + where each of our rows' iterations go
    .venv/bin/python benchmarks/ppo_speed.py --device cuda --model-config benchmarks/models/llama-1b.json  # a GPU

Rows: TRL's setup is full fine-tuning in fp32 with a separate critic initialised from the reward model and a
frozen reference copy; "alignlab fp32 critic" is the same setup in our stage (the like-for-like row); then our
bf16 autocast, and our defaults (bf16 autocast, value head on the policy's trunk). One PPO iteration = sample the
batch, score it, `--ppo-epochs` passes of optimizer steps over mini-batches. The first iteration is warm-up and
not timed. The reward model is the policy's weights with a fresh one-output head (its scores are not the point).

`--device cuda` runs every row (TRL's too) on the first GPU, and the memory column is then the peak CUDA memory
allocated instead of the peak resident memory; `--device cpu` (the default) hides any GPU from every row.
`--model-config` measures a randomly initialised model of a config.json's shape (SmolLM2's tokenizer) instead.

Every row reports the seconds an iteration spends sampling (TRL's `batch_generation`, our rollout's `_sample`); our rows
also split the rest into the scoring passes (policy log-probabilities, reference, values), the reward model, and the
PPO epochs. `--profile` adds torch.profiler's operator table over the timed iterations of each of our rows.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

from dpo_speed import random_model, scratch, smollm2  # the default experiment's model, converted once

REPO = Path(__file__).resolve().parents[1]
PROMPTS = REPO / "src/alignlab/assets/safety/train_prompts.jsonl"
OURS = {  # row label -> alignlab overrides
    "alignlab fp32 critic": ["algo.ppo.precision=fp32", "algo.ppo.value_model=critic", "algo.ppo.critic_init=reward"],
    "alignlab bf16 critic": ["algo.ppo.precision=bf16", "algo.ppo.value_model=critic", "algo.ppo.critic_init=reward"],
    "alignlab bf16 value head": ["algo.ppo.precision=bf16", "algo.ppo.value_model=head"],
}


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--policy", type=Path, help="causal LM folder (default: SmolLM2-135M-Instruct, converted once)")
    p.add_argument("--model-config", type=Path, help="a config.json: a randomly initialised model of that shape")
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu", help="where every row runs")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--mini-batch-size", type=int, default=4)
    p.add_argument("--ppo-epochs", type=int, default=1)
    p.add_argument("--response-length", type=int, default=32)
    p.add_argument("--steps", type=int, default=3, help="PPO iterations per row; the first is not timed")
    p.add_argument("--threads", type=int, default=os.cpu_count(), help="torch threads, the same for every row")
    p.add_argument("--trl-venv", type=Path, default=REPO / ".venv-trl112")
    p.add_argument("--profile", action="store_true", help="torch.profiler over our rows' timed iterations")
    p.add_argument("--side", choices=["driver", "ours"], default="driver", help=argparse.SUPPRESS)
    p.add_argument("--reward", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--label", help=argparse.SUPPRESS)
    p.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    return p.parse_args()


def make_reward(policy: Path, out: Path) -> None:
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_pretrained(policy, num_labels=1, dtype=torch.float32)
    tok = AutoTokenizer.from_pretrained(policy)
    model.config.pad_token_id = tok.pad_token_id
    model.save_pretrained(out)
    tok.save_pretrained(out)


class Phases:
    """Wall-clock seconds per phase of the timed iterations (the first, warm-up, is left out), taken by wrapping the
    functions the PPO stage calls where it looks them up; with `profile`, torch.profiler runs over the same
    iterations. A measuring harness only: the stage's code is not changed."""

    def __init__(self, profile: bool) -> None:
        import torch

        self.seconds: dict[str, float] = defaultdict(float)
        self.iteration = -1
        self.profiler = torch.profiler.profile() if profile else None
        self.table = ""

    def wrap(self, module: Any, name: str, phase: str) -> None:
        inner: Callable[..., Any] = getattr(module, name)

        def timed(*args: Any, **kwargs: Any) -> Any:
            started = time.perf_counter()
            try:
                return inner(*args, **kwargs)
            finally:
                if self.iteration > 0:
                    self.seconds[phase] += time.perf_counter() - started

        setattr(module, name, timed)

    def wrap_iterations(self, recipe_class: type, last: int) -> None:
        inner = recipe_class.train_step

        def step(recipe: Any, it: int) -> dict[str, Any]:
            self.iteration = it
            if self.profiler is not None and it == 1:
                self.profiler.start()
            metrics = inner(recipe, it)
            if self.profiler is not None and it == last:
                self.profiler.stop()
                averages = self.profiler.key_averages()
                self.table = averages.table(sort_by="self_cpu_time_total", row_limit=20, max_name_column_width=48)
            return metrics

        recipe_class.train_step = step

    def per_iteration(self, timed: int) -> dict[str, float]:
        """Seconds per timed iteration: sampling, the scoring passes, the reward model (the rest of the rollout),
        the advantages, the PPO epochs."""
        s = {k: v / timed for k, v in self.seconds.items()}
        return {
            "generation": s["generation"],
            "scoring passes": s["scoring passes"],
            "reward model": s["rollout"] - s["generation"] - s["scoring passes"],
            "advantages": s["advantages"],
            "PPO epochs": s["PPO epochs"],
        }


def run_ours(args: argparse.Namespace) -> None:
    """One alignlab PPO stage in this process: the stage function itself, on the benchmark prompts."""
    import torch

    from alignlab.config import compose_config, validate
    from alignlab.models import load_tokenizer
    from alignlab.rl import rollout
    from alignlab.stages import ppo
    from alignlab.tracking import Tracker
    from alignlab.training.context import StageContext

    torch.set_num_threads(args.threads)
    if (args.device == "cuda") != torch.cuda.is_available():  # the driver hides GPUs from cpu rows
        raise SystemExit(f"--device {args.device}, but torch.cuda.is_available() is {torch.cuda.is_available()}")
    if args.device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    work = scratch("ppo-speed-")
    overrides = [
        "experiment=tiny",
        "logger=none",
        "model.source=local",
        f"model.path={args.policy}",
        f"run.root={work}",
        "pipeline=sft-rm-ppo",
        "pipeline.stages=[ppo]",
        f"algo.ppo.reward={args.reward}",
        f"algo.ppo.batch_size={args.batch_size}",
        f"algo.ppo.mini_batch_size={args.mini_batch_size}",
        f"algo.ppo.ppo_epochs={args.ppo_epochs}",
        f"algo.ppo.max_new_tokens={args.response_length}",
        f"algo.ppo.max_steps={args.steps}",
        "algo.ppo.save_steps=1000000",
        "algo.ppo.temperature=0.7",
        "algo.ppo.learning_rate=3e-6",
        "algo.ppo.logging_steps=1000000",
        *OURS[args.label],
    ]
    cfg = validate(compose_config(overrides))
    tokenizer = load_tokenizer(str(args.policy), cfg.model)
    prompts = [json.loads(line)["prompt"] for line in PROMPTS.read_text().splitlines()]
    pairs = [{"prompt": [{"role": "user", "content": p}]} for p in prompts]
    ctx = StageContext(
        cfg, "ppo", work / "ppo", str(args.policy), str(args.policy), tokenizer, pairs, None, Tracker(cfg, work)
    )
    ctx.stage_dir.mkdir(parents=True)
    phases = Phases(args.profile)
    phases.wrap(rollout, "_sample", "generation")
    phases.wrap(rollout, "_logps_and_values", "scoring passes")
    phases.wrap(ppo, "rollout", "rollout")
    phases.wrap(ppo, "targets", "advantages")
    phases.wrap(ppo, "ppo_epochs", "PPO epochs")
    phases.wrap_iterations(ppo.PPORecipe, args.steps - 1)
    ppo.run(ctx)
    history = json.loads((ctx.stage_dir / "log_history.json").read_text())
    timed = [h["iteration_seconds"] for h in history[1:]]
    tokens = sum(h["eval/response_tokens"] * args.batch_size for h in history[1:])
    result = {
        "seconds_per_iteration": sum(timed) / len(timed),
        "phases": phases.per_iteration(len(timed)),
        "profile": phases.table,
        "response_tokens_per_second": tokens / sum(timed),
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "device": args.device,
        **({"peak_cuda_mib": torch.cuda.max_memory_allocated() / 2**20} if args.device == "cuda" else {}),
        "final_metrics": {k: v for k, v in history[-1].items() if "/" in k},
    }
    args.out.write_text(json.dumps(result, indent=2))


def main() -> None:
    args = parse_args()
    if args.side == "ours":
        run_ours(args)
        return
    if args.device == "cuda":
        import torch

        if not torch.cuda.is_available():  # before the TRL venv is built or any model converted
            raise SystemExit("--device cuda: torch.cuda.is_available() is False on this machine (no GPU visible).")
    # every row in its own process; a cpu benchmark hides any GPU so that neither side picks it up by itself
    env = {**os.environ, **({"CUDA_VISIBLE_DEVICES": ""} if args.device == "cpu" else {})}
    policy = args.policy or smollm2()
    subprocess.run(["bash", str(REPO / "benchmarks/trl112_env.sh"), str(args.trl_venv)], check=True)
    work = scratch("ppo-speed-")
    if args.model_config:
        policy = random_model(args.model_config, policy, work / "model")
    reward = work / "reward"
    make_reward(policy, reward)
    shared = [
        "--batch-size",
        str(args.batch_size),
        "--mini-batch-size",
        str(args.mini_batch_size),
        "--ppo-epochs",
        str(args.ppo_epochs),
        "--response-length",
        str(args.response_length),
        "--steps",
        str(args.steps),
        "--threads",
        str(args.threads),
        "--device",
        args.device,
    ]
    rows: dict[str, dict] = {}
    out = work / "trl.json"
    subprocess.run(
        [
            str(args.trl_venv / "bin/python"),
            str(REPO / "benchmarks/trl112_ppo.py"),
            "--policy",
            str(policy),
            "--reward",
            str(reward),
            "--prompts",
            str(PROMPTS),
            "--out",
            str(out),
            *shared,
        ],
        check=True,
        stdout=subprocess.DEVNULL,
        env=env,
    )
    trl = json.loads(out.read_text())
    rows["TRL 1.12 PPOTrainer (fp32, critic)"] = {
        "seconds_per_iteration": trl["seconds_per_iteration"],
        "response_tokens_per_second": trl["tokens_per_second"],
        "peak_rss_mib": trl["peak_rss_mib"],
        **({"peak_cuda_mib": trl["peak_cuda_mib"]} if "peak_cuda_mib" in trl else {}),
        "phases": {"generation": trl["generation_seconds_per_iteration"]},
    }
    for label in OURS:
        out = work / f"{label.replace(' ', '_')}.json"
        subprocess.run(
            [
                sys.executable,
                __file__,
                "--side",
                "ours",
                "--label",
                label,
                "--policy",
                str(policy),
                "--reward",
                str(reward),
                "--out",
                str(out),
                *shared,
                *(["--profile"] if args.profile else []),
            ],
            check=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            env=env,
        )
        rows[label] = json.loads(out.read_text())
    base = rows["TRL 1.12 PPOTrainer (fp32, critic)"]["seconds_per_iteration"]
    print(
        f"\nPPO on {policy.name}: batch {args.batch_size}, mini-batch {args.mini_batch_size}, "
        f"{args.ppo_epochs} PPO epoch(s), up to {args.response_length} reply tokens, {args.steps - 1} timed "
        f"iterations, {args.threads} torch threads, {args.device}\n"
    )
    memory = "peak_cuda_mib" if args.device == "cuda" else "peak_rss_mib"
    column = "peak CUDA allocated (MiB)" if args.device == "cuda" else "peak RSS (MiB)"
    print(f"| implementation | s / iteration | updates / s | reply tokens / s | {column} | speed-up vs TRL |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    for label, r in rows.items():
        s = r["seconds_per_iteration"]
        print(
            f"| {label} | {s:.2f} | {1 / s:.3f} | {r['response_tokens_per_second']:.1f} | "
            f"{r[memory]:.0f} | {base / s:.2f}x |"
        )
    names = list(rows[next(iter(OURS))]["phases"])
    print("\nSeconds per timed iteration, by phase (TRL's: its sampling only)\n")
    print("| implementation | " + " | ".join(names) + " |")
    print("| --- |" + " ---: |" * len(names))
    for label, r in rows.items():
        cells = [f"{r['phases'][n]:.2f}" if n in r["phases"] else "-" for n in names]
        print(f"| {label} | " + " | ".join(cells) + " |")
    for label, r in rows.items():
        if r.get("profile"):
            print(f"\n{label}: torch.profiler over the timed iterations, top operators by self CPU time")
            print(r["profile"])
    (work / "table.json").write_text(json.dumps(rows, indent=2))
    print(f"\nraw results: {work}")


if __name__ == "__main__":
    main()
