"""A soup stage (`algo.<stage>.soup: N`): the stage trained N times from the same model on the same data, with seeds
seed, seed + 1, ..., and its model the uniform mean of the N results' weights (Wortsman et al. 2022, "Model
soups"; for reward models, WARM; for policies fine-tuned independently from one initialisation, WARP's merge step,
Ramé et al. 2024, which interpolates task vectors spherically where this takes their plain mean).

Why: in the safety study (experiments/safety-frontier) a setting's seeds differ more than settings do, and a
default is judged by its worst seed. Fine-tunes of one model that differ in seed (data order, LoRA initialisation)
tend to lie in one basin, where their mean scores like their average member or better, and sits at the members'
middle rather than at an unlucky one's rates. No library used here averages saved models (TRL, transformers and
peft average nothing; mergekit is a separate tool with its own model loading), and the mean of safetensors files
is a few lines.

Each member is the stage's own function run with a context whose files go to `<stage>/members/<k>/` and whose
seed is the run's plus k, so member 0 is the stage a run without `soup` trains. A finished member (its DONE) is
kept when the run resumes; `<stage>/model/` is written once, from the members' folders, in one rename.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from alignlab import distributed
from alignlab.artifacts import atomic_write_json, is_done, mark_done
from alignlab.errors import RunStateError
from alignlab.training.context import StageContext
from alignlab.training.saving import install


def run(ctx: StageContext, train: Callable[[StageContext], dict[str, Any]]) -> dict[str, Any]:
    """Train the stage's `soup` members with `train` (the stage's entry point), then write their mean to `model/`.
    Returns each member's metrics under `member<k>/` and `soup/members`."""
    n = int(ctx.algo.soup)
    metrics: dict[str, Any] = {"soup/members": n}
    folders = []
    for k in range(n):
        member = member_context(ctx, k)
        if is_done(member.out_dir):
            print(f"[alignlab] {member.label}: done, kept")
            got = _read_metrics(member.out_dir)
        else:
            member.out_dir.mkdir(parents=True, exist_ok=True)
            got = train(member)
            if distributed.is_main():
                atomic_write_json(member.out_dir / "metrics.json", got)
                mark_done(member.out_dir)
            else:
                distributed.wait_for(member.out_dir / "DONE", f"saving {member.label}")
        metrics.update({f"member{k}/{key}": v for key, v in got.items()})
        folders.append(member.model_dir)
    if distributed.is_main():
        tmp = ctx.stage_dir / f".model.tmp{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        average(folders, tmp)
        install(tmp, ctx)
    distributed.barrier()
    return metrics


def member_context(ctx: StageContext, k: int) -> StageContext:
    """The context of member `k`: its own folder, and the run's config with seed + k (read-only, as every stage's)."""
    cfg = copy.deepcopy(ctx.cfg)
    OmegaConf.set_readonly(cfg, False)
    cfg.seed = int(ctx.cfg.seed) + k
    OmegaConf.set_readonly(cfg, True)
    return dataclasses.replace(ctx, cfg=cfg, member=k)


def average(models: list[Path], out: Path) -> None:
    """Write the mean of `models`' weights (summed in fp32, stored in the first's dtypes) to `out`, with the first
    model's other files (config, tokenizer, the shard index). Models that hold different files or tensors are
    refused before anything is written; one weight file of each model is in memory at a time, plus the sum."""
    if len(models) < 2:
        raise RunStateError(f"Run error: a soup needs two models or more, got {len(models)}.")
    files = sorted(p.name for p in models[0].glob("*.safetensors"))
    if not files:
        raise RunStateError(f"Run error: {models[0]} holds no .safetensors weights to average.")
    shapes = {name: _shapes(models[0] / name) for name in files}
    for model in models[1:]:
        theirs = sorted(p.name for p in model.glob("*.safetensors"))
        if theirs != files:
            raise RunStateError(f"Run error: {models[0]} and {model} hold different weight files: {files} / {theirs}.")
        for name in files:
            other = _shapes(model / name)
            differ = sorted(k for k in shapes[name].keys() | other.keys() if shapes[name].get(k) != other.get(k))
            if differ:
                raise RunStateError(
                    f"Run error: {models[0]} and {model} hold different tensors in {name}: {differ[:5]}."
                )
    shutil.copytree(models[0], out, ignore=shutil.ignore_patterns("*.safetensors"), dirs_exist_ok=True)
    for name in files:
        first = load_file(models[0] / name)
        total = {k: v.float() for k, v in first.items()}
        for model in models[1:]:
            for k, v in load_file(model / name).items():
                total[k] += v.float()
        mean = {k: (v / len(models)).to(first[k].dtype).contiguous() for k, v in total.items()}
        save_file(mean, out / name, metadata={"format": "pt"})


def _shapes(path: Path) -> dict[str, list[int]]:
    """Each tensor's shape in a safetensors file, read from its header alone."""
    with safe_open(path, framework="pt") as f:
        return {k: f.get_slice(k).get_shape() for k in f.keys()}  # noqa: SIM118 (safe_open is not iterable)


def _read_metrics(folder: Path) -> dict[str, Any]:
    return json.loads((folder / "metrics.json").read_text())
