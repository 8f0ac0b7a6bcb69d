"""A uniform model soup: the mean of several trained models' weights (Wortsman et al. 2022, "Model soups").

Why: at one run per seed the study's settings differ less than their seeds do (a setting's worst seed is what a
default has to bring inside the targets). Fine-tunes of one pretrained model with different seeds tend to lie in
one basin, where their average scores at least as well as the mean of its members and often as well as the best;
if that holds here, a soup of a setting's seeds is a model whose rates sit at the setting's mean, not its worst
seed's, for the price of the runs the study makes anyway. Every alignlab stage saves full (merged) weights, so the
folders of runs from the same starting model average directly. Inside one run, `algo.<stage>.soup: N` trains a
stage N times and keeps the mean (training/soup.py, whose `average` this script calls).

    .venv/bin/python experiments/safety-frontier/soup.py OUT MODEL MODEL [MODEL ...]
    .venv/bin/alignlab eval model=hub model.path=OUT reference=smollm2-135m-instruct eval=safety
"""

from __future__ import annotations

import argparse
from pathlib import Path

from alignlab.errors import UserError
from alignlab.training.soup import average


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("out", type=Path, help="the soup's folder")
    p.add_argument("models", type=Path, nargs="+", help="trained models' folders, e.g. runs/<name>/<id>/dpo/model")
    a = p.parse_args()
    try:
        average(a.models, a.out)
    except UserError as exc:
        raise SystemExit(str(exc)) from None
    print(f"wrote {a.out}: the mean of {len(a.models)} models")


if __name__ == "__main__":
    main()
