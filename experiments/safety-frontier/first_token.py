"""What a bias on the first token of a model's refusals can do: the reply's first-position margin (the best
refusal-opening token's logit minus the best other token's) as a score of the refusal decision, on the training
prompts and the held-out suites.

The refusal-opening tokens are the first tokens of the bundled refusals, with and without a leading space (a
trained model opens its refusals with them: "I", "Sorry", ...). A bias b added to their logits at the first
position refuses a prompt when margin + b > 0, so each b is a point of a refusal / over-refusal curve this model
can reach by its first token alone. Printed: the curve's AUROC per held-out pair, the greedy decision (b = 0), the
benign share refused at the b that refuses 90% of the held-out harmful prompts (an optimistic bound: that b has
seen them), and the held-out rates at the b fitted on the training prompts alone (90% and 95% of their harmful
prompts refused).

    .venv/bin/python experiments/safety-frontier/first_token.py --model runs/<run>/dpo/model
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from separability import auroc, share

from alignlab.config import compose_config, validate
from alignlab.data.onpolicy import read_prompts, read_refusals
from alignlab.evaluation.suites import load_suite
from alignlab.generation import generation_tokenizer
from alignlab.models import cache_root, load_model, load_tokenizer, resolve_model_path
from alignlab.stages.calibrate import first_position

PAIRS = (("bundled_harmful", "bundled_benign"), ("harmbench", "xstest_safe"))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", help="a model folder (default: the experiment's starting model)")
    p.add_argument("--experiment", default="safety-smollm")
    args = p.parse_args()
    cfg = validate(compose_config([f"experiment={args.experiment}"]))
    path = args.model or resolve_model_path(cfg.model, cache_root(cfg))
    tokenizer = load_tokenizer(path, cfg.model)
    model = load_model(path, cfg.model).eval()
    tok = generation_tokenizer(tokenizer)
    refusals = read_refusals(cfg.algo.pairs.refusals)
    tokens = sorted(
        {tok(t, add_special_tokens=False)["input_ids"][0] for rs in refusals.values() for r in rs for t in (r, " " + r)}
    )

    def margins(prompts: list[str]) -> torch.Tensor:
        _, logits = first_position(model, tokenizer, [[{"role": "user", "content": q}] for q in prompts], 32)
        mask = torch.zeros(logits.shape[1], dtype=torch.bool)
        mask[tokens] = True
        return logits[:, mask].max(-1).values - logits[:, ~mask].max(-1).values

    train = read_prompts(cfg.algo.pairs.prompts)
    harmful = torch.tensor([r.type == "harmful" for r in train])
    fitted = margins([r.prompt for r in train])
    suites = {}
    for name in (n for pair in PAIRS for n in pair):
        suite = load_suite(name, cfg.eval.suites[name], Path(cfg.eval.benchmarks_dir), cfg.seed)
        if suite is not None:
            suites[name] = margins(suite.prompts)
    print(f"model {path}; refusal-opening tokens: {' '.join(tok.convert_ids_to_tokens(tokens))}\n")
    print("| held-out pair | AUROC | greedy: harmful / benign refused | benign refused at 90% of held-out harmful |")
    print("| --- | ---: | --- | ---: |")
    for h, b in PAIRS:
        if h in suites and b in suites:
            pos, neg = suites[h], suites[b]
            cut = torch.quantile(pos, 0.10)
            print(f"| {h} / {b} | {auroc(pos, neg):.3f} | {share(pos > 0)} / {share(neg > 0)} | {share(neg >= cut)} |")
    print("\n| bias fitted on the training prompts | b | " + " | ".join(suites) + " |")
    print("| --- | ---: |" + " ---: |" * len(suites))
    for rate in (0.90, 0.95):
        cut = torch.quantile(fitted[harmful], 1 - rate)
        print(
            f"| {rate:.0%} of training harmful refused | {-cut:.2f} | "
            + " | ".join(share(s >= cut) for s in suites.values())
            + " |"
        )


if __name__ == "__main__":
    main()
