"""A model part-way between the starting model and a trained one: W(s) = W0 + s (W1 - W0).

Weight interpolation (WiSE-FT, Wortsman et al. 2022) is the cheapest post-hoc strength knob there is: one trained
model gives a family of normal model folders, each exportable as it is. The study uses it to ask whether backing a
model that over-refuses off towards its starting point lowers over-refusal faster than it lowers refusal, i.e.
whether a strength set after training could move the frontier rather than slide along it. Both folders must hold
full (merged) weights of the same architecture, as every alignlab stage saves them.

    .venv/bin/python experiments/safety-frontier/interpolate.py START TRAINED 0.75 OUT
    .venv/bin/alignlab eval model=OUT eval=safety eval.judge=probe
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

from safetensors.torch import load_file, save_file


def interpolate(start: Path, trained: Path, s: float, out: Path) -> None:
    """Write W0 + s (W1 - W0) to `out` with `trained`'s config and tokenizer files (mixed in fp32)."""
    w0, w1 = load_file(start / "model.safetensors"), load_file(trained / "model.safetensors")
    if w0.keys() != w1.keys():
        raise SystemExit(f"{start} and {trained} hold different tensors: {sorted(set(w0) ^ set(w1))[:5]}")
    mixed = {k: (w0[k].float() + s * (w1[k].float() - w0[k].float())).to(w1[k].dtype).contiguous() for k in w1}
    out.mkdir(parents=True, exist_ok=True)
    for f in trained.iterdir():
        if f.is_file() and f.name != "model.safetensors":
            shutil.copy(f, out / f.name)
    save_file(mixed, out / "model.safetensors", metadata={"format": "pt"})


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("start", type=Path, help="the starting model's folder (model.safetensors)")
    p.add_argument("trained", type=Path, help="a trained model's folder, e.g. runs/<name>/<id>/dpo/model")
    p.add_argument("s", type=float, help="0: the starting model; 1: the trained one")
    p.add_argument("out", type=Path)
    a = p.parse_args()
    interpolate(a.start, a.trained, a.s, a.out)
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
