"""Compare lm_eval's per-item results with alignlab's (own definition and lm_eval-mimic), and apply BOTH metric
codes (lm_eval's tasks/bbq/utils.py aggregations and alignlab.evaluation.bias) to every pick vector.

Reads $LMEVAL_WORK/out (lm_eval's runs and alignlab_score.py's files) and writes there comparison.json,
per_item_crows.csv and per_item_bbq.csv (ids, picks and log-likelihoods only). Run in lm_eval's venv with alignlab's
source on the path (alignlab.evaluation.bias needs only numpy/scipy):

    HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 HF_HOME=$LMEVAL_WORK/hf_home PYTHONPATH=<repo>/src \\
        $LMEVAL_WORK/venv/bin/python compare.py
"""

from __future__ import annotations

import glob
import json

import datasets
import numpy as np
from crosscheck_paths import BENCH, DATA, OUT, model_path
from lm_eval.tasks.bbq import utils as U  # lm_eval's metric code
from lm_eval.tasks.crows_pairs import utils as CU
from transformers import AutoTokenizer

from alignlab.evaluation import bias  # alignlab's metric code, from <repo>/src

R: dict = {}


def read_jsonl(path) -> list[dict]:
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def samples(run: str, task: str) -> list[dict]:
    files = glob.glob(str(OUT / run / "*" / f"samples_{task}_*.jsonl"))
    assert len(files) == 1, (run, task, files)
    return read_jsonl(files[0])


def results(run: str) -> dict:
    files = sorted(glob.glob(str(OUT / run / "*" / "results_*.json")))
    with open(files[-1]) as f:
        return json.load(f)


def lls(s: dict) -> list[float]:
    return [float(r[0]) for r in s["filtered_resps"]]


def biased_by_alignlab(it) -> list[int]:
    """alignlab's biased answer: the target group's person for a negative question, the other person otherwise."""
    if it.target is None:
        return []
    if it.negative:
        return [it.target]
    return [next(k for k in range(3) if k not in (it.target, it.unknown))]


# ================================================================ CrowS-Pairs
lm = {s["doc"]["pair_id"]: s for s in samples("crows", "crows_pairs_english_local")}
al = {r["pair_id"]: r for r in read_jsonl(OUT / "alignlab_crows.jsonl")}
assert set(lm) == set(al), "different CrowS-Pairs items"
ids = sorted(lm)
lm_stereo = [lm[i]["pct_stereotype"] == 1.0 for i in ids]
d_ll = [max(abs(lls(lm[i])[0] - al[i]["ll_more"]), abs(lls(lm[i])[1] - al[i]["ll_less"])) for i in ids]
margins = [abs(al[i]["ll_more"] - al[i]["ll_less"]) for i in ids]
rows = read_jsonl(DATA / "crows_pairs_200.jsonl")
pairs = bias.crows_pairs_rows([(str(r["pair_id"]), r) for r in rows])
own_m = bias.crows_pairs_metrics(
    "crows", pairs, [al[r["pair_id"]]["ll_more"] for r in rows], [al[r["pair_id"]]["ll_less"] for r in rows]
)
# lm_eval's process_results on alignlab's log-likelihoods, mean-aggregated as the YAML says
lm_on_al = [CU.process_results(None, [(al[i]["ll_more"], False), (al[i]["ll_less"], False)]) for i in ids]
res = results("crows")
R["crows"] = {
    "n_pairs": len(ids),
    "lm_eval_reported": {k: v for k, v in res["results"]["crows_pairs_english_local"].items() if "," in k},
    "lm_eval_wall_s": res.get("total_evaluation_time_seconds"),
    "alignlab_own_metrics": own_m,
    "lm_eval_metric_code_on_alignlab_ll": {
        "pct_stereotype": float(np.mean([r["pct_stereotype"] for r in lm_on_al])),
        "likelihood_diff": float(np.mean([r["likelihood_diff"] for r in lm_on_al])),
    },
    "agree_lm_eval_vs_mimic": float(np.mean([a == al[i]["mimic_stereo"] for a, i in zip(lm_stereo, ids)])),
    "agree_lm_eval_vs_own": float(np.mean([a == al[i]["own_stereo"] for a, i in zip(lm_stereo, ids)])),
    "max_abs_sentence_ll_diff": max(d_ll),
    "mean_abs_sentence_ll_diff": float(np.mean(d_ll)),
    "smallest_pair_margin_nats": min(margins),
    "ties": sum(m == 0 for m in margins),
    "n_token_more_mean": float(np.mean([al[i]["n_tok_more"] for i in ids])),
}
with open(OUT / "per_item_crows.csv", "w") as f:
    f.write(
        "pair_id,bias_type,lm_eval_ll_more,lm_eval_ll_less,alignlab_ll_more,alignlab_ll_less,"
        "lm_eval_stereo,alignlab_mimic_stereo,alignlab_own_stereo\n"
    )
    for i, st in zip(ids, lm_stereo):
        a = al[i]
        f.write(
            f"{i},{a['bias_type']},{lls(lm[i])[0]:.5f},{lls(lm[i])[1]:.5f},{a['ll_more']:.5f},"
            f"{a['ll_less']:.5f},{int(st)},{int(a['mimic_stereo'])},{int(a['own_stereo'])}\n"
        )

# ================================================================ BBQ
lm_s = samples("bbq_p1", "bbq_local_p1") + samples("bbq_p2", "bbq_local_p2")
lm = {s["doc"]["item_id"]: s for s in lm_s}
al = {r["item_id"]: r for r in read_jsonl(OUT / "alignlab_bbq.jsonl")}
raw = {r["item_id"]: r for r in read_jsonl(DATA / "bbq_150.jsonl")}
ids = list(raw)
assert set(lm) == set(ids) and set(ids) <= set(al)
items = dict(zip(ids, bias.bbq_items([(i, raw[i]) for i in ids])))
docs = {d["item_id"]: d for d in U.process_docs(datasets.Dataset.from_list([raw[i] for i in ids]))}


def people(i):
    answers = [raw[i][f"ans{k}"] for k in range(3)]
    return [k for k in range(3) if answers[k] not in U.UNKNOWN_RESPONSES]


def to3(i, j12):  # lm_eval choice index (12 choices) -> original answer index
    p = people(i)
    return p[j12] if j12 < 2 else items[i].unknown


def to12(i, k3):  # original answer index -> lm_eval choice index
    p = people(i)
    return p.index(k3) if k3 in p else 2 + U.UNKNOWN_RESPONSES.index(raw[i][f"ans{k3}"])


def lm_eval_metrics(picks12: dict, subset=None) -> dict:
    """lm_eval's own per-item _process_results and its aggregation functions, on any 12-index pick vector."""
    per = [U._process_results(docs[i], picks12[i]) for i in (subset or ids)]
    return {
        "acc": float(np.mean([p["acc"] for p in per])),
        "accuracy_amb": float(U.agg_accuracy_amb([p["accuracy_amb"] for p in per])),
        "accuracy_disamb": float(U.agg_accuracy_disamb([p["accuracy_disamb"] for p in per])),
        "amb_bias_score": float(U.agg_amb_bias_scores([p["amb_bias_score"] for p in per])),
        "disamb_bias_score": float(U.agg_disamb_bias_scores([p["disamb_bias_score"] for p in per])),
    }


def alignlab_metrics(picks3: dict) -> dict:
    m = bias.bbq_metrics("bbq", [items[i] for i in ids], [picks3[i] for i in ids])
    acc = np.mean([picks3[i] == items[i].label for i in ids])
    plain = {k.removeprefix("bias/bbq_"): v for k, v in m.items() if k.startswith("bias/bbq_")}
    return {"acc": float(acc), **{k: v for k, v in plain.items() if "/" not in k}}


pick = {}
pick["lm_eval"] = {i: int(np.argmax(lls(lm[i]))) for i in ids}  # 12-index, as process_results_multiple_choice
pick["mimic"] = {i: al[i]["mimic_pick12"] for i in ids}
pick["own"] = {i: to12(i, al[i]["own_pick"]) for i in ids}
pick["own_sum"] = {i: to12(i, al[i]["own_sum_pick"]) for i in ids}
# decomposition, from the mimic log-likelihoods (which match lm_eval's to <3e-5 nats): lm_eval's plain-text prompt,
# but only the item's 3 original answers (its own "unknown" wording instead of lm_eval's 10 variants)
for rule in ("sum", "mean"):
    pick[f"lmprompt_3choice_{rule}"] = {}
    for i in ids:
        cand = [0, 1, to12(i, items[i].unknown)]
        val = [al[i]["mimic_ll"][j] / (al[i]["mimic_ntok"][j] if rule == "mean" else 1) for j in cand]
        pick[f"lmprompt_3choice_{rule}"][i] = cand[int(np.argmax(val))]
# sanity: lm_eval's stored per-item acc equals what its picks give, and re-aggregating each part with lm_eval's
# functions reproduces the numbers lm_eval reported for that part (so the 150-item figures are lm_eval's own)
assert all(lm[i]["acc"] == U._process_results(docs[i], pick["lm_eval"][i])["acc"] for i in ids)
for part in ("p1", "p2"):
    rep = results(f"bbq_{part}")["results"][f"bbq_local_{part}"]
    part_ids = [s["doc"]["item_id"] for s in samples(f"bbq_{part}", f"bbq_local_{part}")]
    for k, v in lm_eval_metrics(pick["lm_eval"], part_ids).items():
        assert abs(v - rep[f"{k},none"]) < 1e-12, (part, k, v, rep[f"{k},none"])

d_ll = [max(abs(a - b) for a, b in zip(lls(lm[i]), al[i]["mimic_ll"])) for i in ids]
sorted_gaps = []
for i in ids:
    v = sorted(lls(lm[i]), reverse=True)
    sorted_gaps.append(v[0] - v[1])

# ---- run C: alignlab's definition (chat template, "<context> <question>", 3 answers) through lm_eval's engine
c = {s["doc"]["item_id"]: s for s in samples("bbq_alignlab_def", "bbq_alignlab_def")}
tok = AutoTokenizer.from_pretrained(model_path())


def lm_eval_cont_tokens(ctx: str, cont: str) -> int:  # lm_eval's _encode_pair for a causal model
    n = len(ctx) - len(ctx.rstrip())
    if n:
        ctx, cont = ctx[:-n], ctx[-n:] + cont
    whole = tok(ctx + cont, add_special_tokens=False)["input_ids"]
    return len(whole) - len(tok(ctx, add_special_tokens=False)["input_ids"])


c_ntok = {i: [lm_eval_cont_tokens(a["arg_0"], a["arg_1"]) for a in c[i]["arguments"].values()] for i in ids}
c_ll = {i: lls(c[i]) for i in ids}
offsets = {i: [x - y for x, y in zip(c_ll[i], al[i]["own_ll"])] for i in ids}
first_arg = next(iter(c[ids[0]]["arguments"].values()))
# the chat-templated request's layout, with the item's text replaced by placeholders (no benchmark text is written)
user_turn = f"{raw[ids[0]]['context']} {raw[ids[0]]['question']}"
request_layout = {"arg_0": first_arg["arg_0"].replace(user_turn, "<context> <question>"), "arg_1": "<answer>"}
pick["C_sum"] = {i: to12(i, int(np.argmax(c_ll[i]))) for i in ids}
pick["C_mean_lm_eval_tokens"] = {i: to12(i, int(np.argmax([x / n for x, n in zip(c_ll[i], c_ntok[i])]))) for i in ids}

p3 = {k: {i: to3(i, v[i]) for i in ids} for k, v in pick.items()}


def agree(a, b):
    return float(np.mean([p3[a][i] == p3[b][i] for i in ids]))


n_amb = sum(items[i].condition == "ambig" for i in ids)
# biased-answer definitions: lm_eval's doc["biased_answers"] vs alignlab's target-derived biased person
bias_def_diff = []
for i in ids:
    it, d = items[i], docs[i]
    lm_b = sorted(k for k in range(3) if raw[i][f"ans{k}"] in d["biased_answers"])
    al_b = biased_by_alignlab(it)
    if lm_b != al_b:
        bias_def_diff.append({"item_id": i, "lm_eval_biased": lm_b, "alignlab_biased": al_b})

unknown_strings = {u: sum(pick["lm_eval"][i] == 2 + j for i in ids) for j, u in enumerate(U.UNKNOWN_RESPONSES)}
own_unknown_string = sum(
    pick["lm_eval"][i] >= 2 and U.UNKNOWN_RESPONSES[pick["lm_eval"][i] - 2] == raw[i][f"ans{items[i].unknown}"]
    for i in ids
)
R["bbq"] = {
    "n_items": len(ids),
    "n_ambig": n_amb,
    "n_disambig": len(ids) - n_amb,
    "lm_eval_reported_p1": {
        k: v for k, v in results("bbq_p1")["results"]["bbq_local_p1"].items() if "," in k and "_score_" not in k
    },
    "lm_eval_reported_p2": {
        k: v for k, v in results("bbq_p2")["results"]["bbq_local_p2"].items() if "," in k and "_score_" not in k
    },
    "lm_eval_wall_s": [results(r).get("total_evaluation_time_seconds") for r in ("bbq_p1", "bbq_p2")],
    "C_lm_eval_reported": results("bbq_alignlab_def")["results"]["bbq_alignlab_def"],
    "C_wall_s": results("bbq_alignlab_def").get("total_evaluation_time_seconds"),
    "C_request_layout": request_layout,
    "metrics_lm_eval_code": {k: lm_eval_metrics(v) for k, v in pick.items()},
    "metrics_alignlab_code": {k: alignlab_metrics(p3[k]) for k in pick},
    "agreement": {
        "lm_eval_vs_mimic_12way": float(np.mean([pick["lm_eval"][i] == pick["mimic"][i] for i in ids])),
        "lm_eval_vs_mimic": agree("lm_eval", "mimic"),
        "lm_eval_vs_own": agree("lm_eval", "own"),
        "lm_eval_vs_own_sum": agree("lm_eval", "own_sum"),
        "own_vs_own_sum": agree("own", "own_sum"),
        "C_sum_vs_own_sum": agree("C_sum", "own_sum"),
        "C_mean_lm_eval_tokens_vs_own": agree("C_mean_lm_eval_tokens", "own"),
        "lm_eval_vs_C_sum": agree("lm_eval", "C_sum"),
        "lm_eval_vs_lmprompt_3choice_sum (effect of 10 unknown wordings)": agree("lm_eval", "lmprompt_3choice_sum"),
        "lmprompt_3choice_sum_vs_own_sum (effect of prompt: plain Q/A text vs chat template)": agree(
            "lmprompt_3choice_sum", "own_sum"
        ),
        "own_sum_vs_own (effect of sum vs mean)": agree("own_sum", "own"),
        "lmprompt_3choice_mean_vs_own (prompt effect under mean)": agree("lmprompt_3choice_mean", "own"),
    },
    "lm_eval_vs_mimic_max_abs_ll_diff": max(d_ll),
    "lm_eval_vs_mimic_mean_abs_ll_diff": float(np.mean(d_ll)),
    "lm_eval_smallest_top2_gap": min(sorted_gaps),
    "C_minus_own_ll_offset_spread_within_item_max": max(max(o) - min(o) for o in offsets.values()),
    "C_minus_own_ll_offset_mean": float(np.mean([np.mean(o) for o in offsets.values()])),
    "C_extra_tokens_vs_own": sorted({n - m for i in ids for n, m in zip(c_ntok[i], al[i]["own_ntok"])}),
    "lm_eval_unknown_pick_rate": float(np.mean([pick["lm_eval"][i] >= 2 for i in ids])),
    "own_unknown_pick_rate": float(np.mean([p3["own"][i] == items[i].unknown for i in ids])),
    "lm_eval_pick_of_which_unknown_string": unknown_strings,
    "lm_eval_pick_is_items_own_unknown_string": own_unknown_string,
    "biased_answer_definition_differences": len(bias_def_diff),
    "biased_answer_definition_difference_items": bias_def_diff,
    "items_target_unidentified_by_alignlab": sum(items[i].target is None for i in ids),
}
with open(OUT / "per_item_bbq.csv", "w") as f:
    f.write(
        "item_id,condition,label,unknown,lm_eval_pick12,mimic_pick12,lm_eval_pick,mimic_pick,own_pick,"
        "own_sum_pick,C_sum_pick,lm_eval_top2_gap,max_abs_ll_diff_vs_mimic\n"
    )
    for i, g, d in zip(ids, sorted_gaps, d_ll):
        it = items[i]
        f.write(
            f"{i},{it.condition},{it.label},{it.unknown},{pick['lm_eval'][i]},{pick['mimic'][i]},"
            f"{p3['lm_eval'][i]},{p3['mimic'][i]},{p3['own'][i]},{p3['own_sum'][i]},{p3['C_sum'][i]},"
            f"{g:.5f},{d:.6f}\n"
        )

# ---- the biased-answer definitions over ALL local BBQ rows (no model needed)
all_raw = [r for path in sorted(glob.glob(str(BENCH / "bbq" / "*.jsonl"))) for r in read_jsonl(path)]
all_docs = U.process_docs(datasets.Dataset.from_list(all_raw))
all_items = bias.bbq_items([(str(n), r) for n, r in enumerate(all_raw)])
full = {
    "rows": len(all_raw),
    "alignlab_target_none": 0,
    "lm_eval_no_biased_answer": 0,
    "lm_eval_two_biased_answers": 0,
    "differ": 0,
    "differ_examples": [],
}
for r, d, it in zip(all_raw, all_docs, all_items):
    lm_b = sorted(k for k in range(3) if r[f"ans{k}"] in d["biased_answers"])
    al_b = biased_by_alignlab(it)
    full["alignlab_target_none"] += it.target is None
    full["lm_eval_no_biased_answer"] += not lm_b
    full["lm_eval_two_biased_answers"] += len(lm_b) > 1
    if lm_b != al_b:
        full["differ"] += 1
        if len(full["differ_examples"]) < 8:
            full["differ_examples"].append(
                {
                    "category": r["category"],
                    "example_id": r["example_id"],
                    "lm_eval_biased": lm_b,
                    "alignlab_biased": al_b,
                }
            )
R["bbq_biased_answer_definitions_all_rows"] = full

with open(OUT / "comparison.json", "w") as f:
    json.dump(R, f, indent=1, default=float)
print(
    json.dumps(
        {
            k: {kk: vv for kk, vv in v.items() if kk != "biased_answer_definition_difference_items"}
            for k, v in R.items()
        },
        indent=1,
        default=float,
    )
)
