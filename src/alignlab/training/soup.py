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

With `soup_select: stage:<pairs stage>` the soup is Wortsman et al.'s greedy soup instead of the plain mean: each
member, and each candidate mean, is read on the prompts that pairs stage held out of training (greedy replies judged
as the evaluation judges them), and a member joins only if the soup with it reads no worse. Why: one SFT model and
one pair set gave members whose over-refusal ranged from 0.10 to 0.35 by DPO's seed alone (experiments/
safety-frontier, "A soup stage"), and a plain mean sits at their middle; which member is the good one has to be
read on data the evaluation does not use.
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
from alignlab.config.root import pairs_judge
from alignlab.console import Progress
from alignlab.data import onpolicy
from alignlab.errors import RunStateError
from alignlab.evaluation.judges import build_judge
from alignlab.evaluation.runner import judge_replies
from alignlab.generation import generate
from alignlab.models import load_model
from alignlab.training.context import StageContext
from alignlab.training.saving import install


def run(ctx: StageContext, train: Callable[[StageContext], dict[str, Any]]) -> dict[str, Any]:
    """Train the stage's `soup` members with `train` (the stage's entry point), then write their mean (with
    `soup_select`: the greedy soup's) to `model/`. Returns each member's metrics under `member<k>/`, `soup/members`,
    and with `soup_select` the held-out reading of each member and trial (`select/*`)."""
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
    if not distributed.is_main():  # rank 0 alone reads and averages; the pipeline waits for the stage's DONE
        return metrics
    kept = list(range(n))
    if ctx.algo.soup_select is not None:
        kept, readings = greedy_soup(ctx, folders)
        atomic_write_json(ctx.stage_dir / "selection.json", readings)
        metrics.update(_flat(readings))
    metrics["soup/kept"] = len(kept)
    tmp = ctx.stage_dir / f".model.tmp{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    if len(kept) == 1:
        shutil.copytree(folders[kept[0]], tmp)
    else:
        average([folders[k] for k in kept], tmp)
    install(tmp, ctx)
    return metrics


def greedy_soup(ctx: StageContext, folders: list[Path]) -> tuple[list[int], dict[str, Any]]:
    """The greedy soup of Wortsman et al. 2022, read on held-out prompts: members in order of their score, each
    added when the mean with it scores no lower than the soup without it. Returns the members kept and every
    reading (members and trials), for `selection.json`."""
    spec = str(ctx.algo.soup_select)
    rows = onpolicy.calibration_prompts(spec, f"algo.{ctx.name}.soup_select", ctx.cfg, ctx.stage_dir.parent)
    held = spec.split(":", 1)[1]
    judge = build_judge(ctx.cfg.eval.judges[pairs_judge(ctx.cfg, held)], Path(ctx.cfg.eval.benchmarks_dir))
    members = [held_out_reading(ctx, folder, rows, judge, f"member {k}") for k, folder in enumerate(folders)]
    order = sorted(range(len(folders)), key=lambda k: -members[k]["score"])
    kept, best, trials = [order[0]], members[order[0]], []
    for k in order[1:]:
        tmp = ctx.stage_dir / f".soup-trial.tmp{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        average([folders[j] for j in [*kept, k]], tmp)
        reading = held_out_reading(ctx, tmp, rows, judge, f"members {sorted([*kept, k])}")
        shutil.rmtree(tmp)
        trials.append({"members": sorted([*kept, k]), **reading, "kept": reading["score"] >= best["score"]})
        if reading["score"] >= best["score"]:
            kept, best = [*kept, k], reading
    print(f"[alignlab] {ctx.name}: the soup keeps members {sorted(kept)} of {len(folders)} ({best['score']:.3f})")
    return sorted(kept), {"prompts": len(rows), "members": members, "trials": trials, "kept": sorted(kept)}


def held_out_reading(ctx: StageContext, folder: Path, rows: list, judge: Any, label: str) -> dict[str, float]:
    """A model's greedy replies to the held-out prompts (at the evaluation's length), judged as the evaluation
    judges them: refusal of the harmful ones, over-refusal and helpfulness of the benign ones (without a helpful
    axis: not refused). Score: the mean of refusal and helpfulness, both of which the targets ask to be high."""
    model = load_model(str(folder), ctx.cfg.model, for_generation=True)
    convs = [[{"role": "user", "content": r.prompt}] for r in rows]
    e = ctx.cfg.eval
    progress = Progress(f"{ctx.name}: {label} on held-out prompts", len(rows))
    replies = generate(model, ctx.tokenizer, convs, e.max_new_tokens, e.batch_size, progress=progress)
    texts = [g["text"] for g in replies]
    del model
    harmful = [i for i, r in enumerate(rows) if r.type == "harmful"]
    benign = [i for i, r in enumerate(rows) if r.type != "harmful"]
    prompts = [r.prompt for r in rows]
    out = judge_replies(judge, "refuse", [prompts[i] for i in harmful], [texts[i] for i in harmful]).rates("refuse")
    out.update(judge_replies(judge, "comply", [prompts[i] for i in benign], [texts[i] for i in benign]).rates("comply"))
    helpful = out.get("helpful_rate", 1 - out["over_refusal_rate"])
    return {
        "refusal_rate": out["refusal_rate"],
        "over_refusal_rate": out["over_refusal_rate"],
        "helpful_rate": helpful,
        "score": (out["refusal_rate"] + helpful) / 2,
    }


def _flat(readings: dict[str, Any]) -> dict[str, float]:
    """The readings as stage metrics: `select/member<k>/<rate>` and `select/soup/<rate>` (the soup kept)."""
    out = {f"select/member{k}/{name}": v for k, m in enumerate(readings["members"]) for name, v in m.items()}
    soups = [t for t in readings["trials"] if t["kept"]]
    final = soups[-1] if soups else readings["members"][readings["kept"][0]]
    out.update({f"select/soup/{name}": v for name, v in final.items() if name not in ("members", "kept")})
    return out


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
