"""The calibrate stage (stages/calibrate.py) run alone on a finished run's DPO model at another refusal_rate: the
points of one model's calibration curve without training it again. Writes OUT/model and OUT/metrics.json; then
`alignlab eval model=OUT/model reference=smollm2-135m-instruct eval=safety` evaluates it.

    .venv/bin/python experiments/safety-frontier/recalibrate.py runs/<run> 0.85 calibrated/0.85
    .venv/bin/python experiments/safety-frontier/recalibrate.py runs/<run> 0.9 calibrated/token \
        'model.refusal_token="<empty_output>"' algo.calibrate.prompts=runs/<run>/pairs/held_out.jsonl
    # a diagnostic: tokens added to the refusal tokens the stage finds (does the refusal move to another opening?)
    .venv/bin/python experiments/safety-frontier/recalibrate.py runs/<run> 0.9 calibrated/more --also-tokens ĠI,We
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from alignlab.config import compose_config, validate
from alignlab.models import load_tokenizer
from alignlab.stages import calibrate
from alignlab.training.context import StageContext


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("run", type=Path, help="a run folder with dpo/model")
    p.add_argument("rate", type=float, help="algo.calibrate.refusal_rate")
    p.add_argument("out", type=Path)
    p.add_argument("--experiment", default="safety-smollm-openings")
    p.add_argument(
        "--also-tokens", default="", help="comma-separated token pieces to bias beside those the stage finds"
    )
    p.add_argument("overrides", nargs="*", help="more Hydra overrides, e.g. the run's model.refusal_token")
    args = p.parse_args()
    overrides = [
        f"experiment={args.experiment}",
        "pipeline=safety-calibrated",
        f"algo.calibrate.refusal_rate={args.rate}",
        *args.overrides,
    ]
    cfg = validate(compose_config(overrides))
    model = str(args.run / "dpo" / "model")
    ctx = StageContext(cfg, "calibrate", args.out, model, model, load_tokenizer(model, cfg.model), None, None, None)
    if args.also_tokens:
        if cfg.model.refusal_token:
            raise SystemExit("--also-tokens adds to the refusal tokens found; with model.refusal_token none are found")
        also_tokens(ctx.tokenizer, args.also_tokens.split(","))
    args.out.mkdir(parents=True, exist_ok=True)
    metrics = calibrate.run(ctx)
    (args.out / "metrics.json").write_text(json.dumps(metrics, indent=1) + "\n")
    print(json.dumps(metrics, indent=1))


def also_tokens(tokenizer: object, pieces: list[str]) -> None:
    """Make the stage bias `pieces` as well as the refusal tokens it finds (a piece not in the vocabulary stops)."""
    ids = tokenizer.convert_tokens_to_ids(pieces)
    missing = [p for p, i in zip(pieces, ids, strict=True) if i is None or i == tokenizer.unk_token_id]
    if missing:
        raise SystemExit(f"not tokens of this vocabulary: {missing}")
    found = calibrate.refusal_tokens
    calibrate.refusal_tokens = lambda first, refused: sorted(set(found(first, refused)) | set(ids))


if __name__ == "__main__":
    main()
