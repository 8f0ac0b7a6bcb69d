"""Greedy replies to the default evaluation's prompts: Hugging Face `generate` as a user calls it, against
alignlab's `generation.generate` (token-length order, finished rows leave the batch), with the same outputs.

Both run back to back in one process on the same model (a busy machine slows both alike), on the refusal suites
of the experiment's `eval` group (the bundled held-out prompts, HarmBench, XSTest's safe prompts: ~690 prompts in
the default), with the evaluation's batch size and reply cap. "As a user calls it": batches in the suites' order,
left padding, `model.generate(..., do_sample=False, max_new_tokens=..., eos_token_id=<end of turn>)`. Every reply
is compared token for token; a mismatch is printed with the first token where the two differ.

    .venv/bin/python benchmarks/generation_speed.py                         # the default experiment's model
    .venv/bin/python benchmarks/generation_speed.py --model runs/.../dpo/model   # a trained model (shorter replies)
    .venv/bin/python benchmarks/generation_speed.py --limit 128 --device cuda model.generation_dtype=bfloat16
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from alignlab.config import compose_config, validate
from alignlab.evaluation.suites import load_suite
from alignlab.generation import generate, generation_tokenizer, stop_ids
from alignlab.models import cache_root, load_model, load_tokenizer, resolve_model_path


def hf_generate(model, tokenizer, prompts: list[str], max_new_tokens: int, batch_size: int) -> list[list[int]]:
    """The reply token ids (up to the end-of-turn token, excluded) from `model.generate`, in the given order."""
    tok, stops = generation_tokenizer(tokenizer), stop_ids(tokenizer)
    device = next(model.parameters()).device
    replies = []
    for start in range(0, len(prompts), batch_size):
        convs = [[{"role": "user", "content": p}] for p in prompts[start : start + batch_size]]
        texts = [tok.apply_chat_template(c, add_generation_prompt=True, tokenize=False) for c in convs]
        enc = tok(texts, return_tensors="pt", padding=True, add_special_tokens=False).to(device)
        with torch.no_grad():
            out = model.generate(
                **enc,
                max_new_tokens=max_new_tokens,
                do_sample=False,
                temperature=None,
                top_p=None,
                top_k=None,
                eos_token_id=stops,
                pad_token_id=tok.pad_token_id,
            )
        for row in out[:, enc["input_ids"].shape[1] :].tolist():
            ended = next((k for k, t in enumerate(row) if t in stops), None)
            replies.append(row[:ended] if ended is not None else [t for t in row if t != tok.pad_token_id])
    return replies


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--experiment", default="safety-smollm")
    p.add_argument("--model", help="a model folder (default: the experiment's starting model)")
    p.add_argument("--limit", type=int, help="the first N prompts only (a quick look)")
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--batch-size", type=int, help="default: the evaluation's (eval.batch_size)")
    p.add_argument("overrides", nargs="*", help="config overrides, as on alignlab's command line")
    args = p.parse_args()
    cfg = validate(compose_config([f"experiment={args.experiment}", *args.overrides]))
    path = args.model or resolve_model_path(cfg.model, cache_root(cfg))
    tokenizer = load_tokenizer(path, cfg.model)
    model = load_model(path, cfg.model, for_generation=True).to(args.device)
    prompts = []
    for name, spec in cfg.eval.suites.items():
        if spec is not None and spec.kind == "refusal":
            suite = load_suite(name, spec, Path(cfg.eval.benchmarks_dir), cfg.seed)
            prompts += suite.prompts if suite is not None else []
    prompts = prompts[: args.limit] if args.limit else prompts
    batch, cap = args.batch_size or cfg.eval.batch_size, cfg.eval.max_new_tokens
    dtype = next(model.parameters()).dtype
    print(f"model {path} ({dtype}, {args.device}); {len(prompts)} prompts, batch {batch}, up to {cap} new tokens\n")

    start = time.perf_counter()
    theirs = hf_generate(model, tokenizer, prompts, cap, batch)
    hf_seconds = time.perf_counter() - start
    convs = [[{"role": "user", "content": p}] for p in prompts]
    start = time.perf_counter()
    ours = [r["token_ids"] for r in generate(model, tokenizer, convs, cap, batch)]
    our_seconds = time.perf_counter() - start

    tokens = sum(len(r) for r in theirs)
    print("| generation | seconds | reply tokens | tokens/s | speed-up |\n| --- | ---: | ---: | ---: | ---: |")
    print(f"| HF generate, as a user calls it | {hf_seconds:.1f} | {tokens} | {tokens / hf_seconds:.1f} | 1.00x |")
    print(
        f"| alignlab generate | {our_seconds:.1f} | {sum(len(r) for r in ours)} | "
        f"{sum(len(r) for r in ours) / our_seconds:.1f} | {hf_seconds / our_seconds:.2f}x |"
    )
    differ = [i for i, (a, b) in enumerate(zip(theirs, ours, strict=True)) if a != b]
    print(f"\nreplies identical token for token: {len(prompts) - len(differ)} of {len(prompts)}")
    for i in differ[:5]:
        first = next(
            (k for k, (a, b) in enumerate(zip(theirs[i], ours[i])) if a != b), min(len(theirs[i]), len(ours[i]))
        )
        print(
            f"- prompt {i} differs from reply token {first}: HF {tokenizer.decode(theirs[i][first : first + 8])!r} "
            f"vs ours {tokenizer.decode(ours[i][first : first + 8])!r}"
        )


if __name__ == "__main__":
    main()
