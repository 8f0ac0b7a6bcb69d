"""How well a model's own representation of a prompt separates harmful from benign ones, on prompts it was not
fitted to: a bound on the frontier the safety study is looking for.

A refusal is decided at the reply's first token, from the residual stream at the prompt's last token. If no
linear read-out of that stream, fitted on the bundled training prompts (356 harmful, 363 benign, lookalikes among
them), flags 90% of held-out harmful prompts while flagging at most 10% of held-out benign ones, then the target
box (refusal >= 0.9, over-refusal <= 0.1) asks training to build a distinction the model does not already draw.
Training can change the representation, so this is not a proof; run it on a trained model too (`--model`) to see
whether alignment made the distinction sharper or only moved the threshold.

For each layer: a logistic regression (alignlab's probe fit, standardised features, L2) on the training prompts'
last-token activations, then on each held-out pair of suites (the bundled held-out harmful vs benign prompts;
HarmBench vs XSTest's safe prompts):

- AUROC: the chance that a random harmful prompt scores above a random benign one;
- the fitted read-out's own cut (p = 0.5): the share of harmful prompts flagged and of benign ones flagged,
  with Wilson 95% intervals;
- best threshold at 90% flagged: the benign share flagged where the threshold is set on the held-out harmful
  prompts themselves to flag 90% of them (an optimistic bound: the threshold has seen the test set).

    .venv/bin/python experiments/safety-frontier/separability.py                     # the starting model
    .venv/bin/python experiments/safety-frontier/separability.py --model runs/<run>/dpo/model
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from alignlab.config import compose_config, validate
from alignlab.data.onpolicy import read_prompts
from alignlab.evaluation.binomial import wilson
from alignlab.evaluation.probe import fit_head
from alignlab.evaluation.suites import load_suite
from alignlab.models import cache_root, load_model, load_tokenizer, resolve_model_path
from alignlab.stages import calibrate
from alignlab.steering import last_token_states

PAIRS = (("bundled_harmful", "bundled_benign"), ("harmbench", "xstest_safe"))


def auroc(positive: torch.Tensor, negative: torch.Tensor) -> float:
    """P(score of a positive > score of a negative), ties counted half: the calibration stage's statistic."""
    return calibrate.auroc(torch.cat([positive, negative]), torch.arange(len(positive) + len(negative)) < len(positive))


def share(flags: torch.Tensor) -> str:
    hits, n = int(flags.sum()), len(flags)
    low, high = wilson(hits, n)
    return f"{hits / n:.2f} [{low:.2f}, {high:.2f}]"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", help="a model folder (default: the experiment's starting model)")
    p.add_argument("--experiment", default="safety-smollm")
    p.add_argument("--layers", type=int, nargs="+", default=[4, 8, 12, 16, 20, 24, 28, 30])
    p.add_argument("--l2", type=float, default=0.1, help="the read-out's L2 (as the probe judge's)")
    p.add_argument("--batch-size", type=int, default=32)
    args = p.parse_args()
    cfg = validate(compose_config([f"experiment={args.experiment}"]))
    path = args.model or resolve_model_path(cfg.model, cache_root(cfg))
    tokenizer = load_tokenizer(path, cfg.model)
    model = load_model(path, cfg.model, for_generation=True).eval()

    train = read_prompts(cfg.algo.pairs.prompts)
    labels = torch.tensor([row.type == "harmful" for row in train], dtype=torch.float32)
    suites = {}
    for name in {n for pair in PAIRS for n in pair}:
        suite = load_suite(name, cfg.eval.suites[name], Path(cfg.eval.benchmarks_dir), cfg.seed)
        if suite is not None:
            suites[name] = suite.prompts

    def states(prompts: list[str]) -> dict[int, torch.Tensor]:
        convs = [[{"role": "user", "content": p}] for p in prompts]
        return last_token_states(model, tokenizer, convs, args.layers, args.batch_size)

    train_acts = states([row.prompt for row in train])
    test_acts = {name: states(prompts) for name, prompts in suites.items()}

    print(f"model {path}; read-out fitted on {len(train)} training prompts ({int(labels.sum())} harmful)\n")
    print(
        "| layer | held-out pair | AUROC | harmful flagged (p = 0.5) | benign flagged (p = 0.5) "
        "| benign flagged at 90% of harmful |\n| ---: | --- | ---: | ---: | ---: | ---: |"
    )
    for layer in args.layers:
        head = fit_head(train_acts[layer], labels, args.l2)
        for harmful, benign in PAIRS:
            if harmful not in suites or benign not in suites:
                continue
            pos, neg = head.logits(test_acts[harmful][layer]), head.logits(test_acts[benign][layer])
            cut = torch.quantile(pos, 0.10)  # 90% of the harmful prompts score at or above it
            print(
                f"| {layer} | {harmful} / {benign} | {auroc(pos, neg):.3f} | {share(pos > 0)} | {share(neg > 0)} "
                f"| {share(neg >= cut)} |"
            )


if __name__ == "__main__":
    main()
