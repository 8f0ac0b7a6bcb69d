"""A uniform model soup: the mean of several trained models' weights (Wortsman et al. 2022, "Model soups").

Why: at one run per seed the study's settings differ less than their seeds do (a setting's worst seed is what a
default has to bring inside the targets). Fine-tunes of one pretrained model with different seeds tend to lie in
one basin, where their average scores at least as well as the mean of its members and often as well as the best;
if that holds here, a soup of a setting's seeds is a model whose rates sit at the setting's mean, not its worst
seed's, for the price of the runs the study makes anyway. Every alignlab stage saves full (merged) weights, so the
folders of runs from the same starting model average directly.

    .venv/bin/python experiments/safety-frontier/soup.py OUT MODEL MODEL [MODEL ...]
    .venv/bin/alignlab eval model=hub model.path=OUT reference=smollm2-135m-instruct eval=safety
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

from safetensors.torch import load_file, save_file


def soup(models: list[Path], out: Path) -> None:
    """Write the mean of `models`' weights (in fp32, stored in the first's dtypes) to `out`, with the first model's
    config and tokenizer files. Models holding different tensors are refused before anything is written."""
    if len(models) < 2:
        raise SystemExit(f"a soup needs two models or more, got {len(models)}")
    weights = [load_file(m / "model.safetensors") for m in models]
    first = weights[0]
    for model, w in zip(models[1:], weights[1:], strict=True):
        differ = sorted(
            k for k in first.keys() | w.keys() if k not in w or k not in first or w[k].shape != first[k].shape
        )
        if differ:
            raise SystemExit(f"{models[0]} and {model} hold different tensors: {differ[:5]}")
    mean = {k: (sum(w[k].float() for w in weights) / len(weights)).to(first[k].dtype).contiguous() for k in first}
    shutil.copytree(models[0], out, ignore=shutil.ignore_patterns("model.safetensors"), dirs_exist_ok=True)
    save_file(mean, out / "model.safetensors", metadata={"format": "pt"})


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("out", type=Path, help="the soup's folder")
    p.add_argument("models", type=Path, nargs="+", help="trained models' folders, e.g. runs/<name>/<id>/dpo/model")
    a = p.parse_args()
    soup(a.models, a.out)
    print(f"wrote {a.out}: the mean of {len(a.models)} models")


if __name__ == "__main__":
    main()
