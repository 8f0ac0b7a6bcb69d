"""Write lm_eval task folders under $LMEVAL_WORK/tasks from the INSTALLED lm_eval package (run in lm_eval's venv).

`crows_pairs_english_local` and `bbq_local_p1` / `bbq_local_p2` are lm_eval's own crows_pairs_english and bbq
(multiple choice) tasks with ONLY the dataset source (and task name / tag) changed: the YAML text is read from the
installed package and the dataset lines are replaced (`dataset_path: json`, `dataset_name: null`,
`dataset_kwargs.data_files.test: <local jsonl>`); each folder's DIFF_vs_lm_eval.diff shows the change. Each
folder's utils.py only re-exports lm_eval's own utils module, so prompt formatting, choices, process_docs,
process_results and aggregations are lm_eval's code. Nothing of lm_eval's is copied into the repository.

Also writes `bbq_alignlab_def`, a task with alignlab's BBQ definition (plain "<context> <question>" user turn, the 3
original answers) for a run with --apply_chat_template, used to cross-check alignlab's likelihood code on its own
definition.

    $LMEVAL_WORK/venv/bin/python make_tasks.py
"""

from __future__ import annotations

import difflib
import json
from pathlib import Path

import lm_eval.tasks
from crosscheck_paths import DATA, TASKS

PKG = Path(lm_eval.tasks.__file__).parent


def local(src: Path, name: str, module: str, data_file: Path, replace: dict[str, str]) -> None:
    """Copy lm_eval's task YAML `src` as task `name` reading `data_file`; utils.py re-exports `module`."""
    text = src.read_text()
    new = text
    for old, repl in replace.items():
        if old not in new:
            raise SystemExit(f"{src}: expected {old!r}; lm_eval's task YAML has changed (this was written for 0.4.13)")
        new = new.replace(old, repl)
    new = new.replace(
        "test_split: test\n",
        f"test_split: test\ndataset_kwargs:\n  data_files:\n    test: {json.dumps(str(data_file))}\n",
    )
    folder = TASKS / name
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{name}.yaml").write_text(new)
    (folder / "utils.py").write_text(
        "# lm_eval's own task code, re-exported so the YAML's !function references resolve here.\n"
        f"from {module} import *  # noqa: F401,F403\n"
    )
    diff = "".join(difflib.unified_diff(text.splitlines(True), new.splitlines(True), str(src), f"{name}.yaml"))
    (folder / "DIFF_vs_lm_eval.diff").write_text(diff)
    print(diff)


ALIGNLAB_DEF = """\
# alignlab's BBQ definition run through lm_eval's engine: the user turn is "<context> <question>", the three
# original answers are the choices; use with --apply_chat_template (lm_eval then drops the target delimiter, so
# each answer is scored as the assistant's reply right after the generation prompt, as alignlab does).
# lm_eval's acc is the sum-log-likelihood argmax; alignlab's mean-per-token pick is computed from the logged
# per-choice log-likelihoods in compare.py.
task: bbq_alignlab_def
dataset_path: json
dataset_name: null
dataset_kwargs:
  data_files:
    test: {data_file}
test_split: test
output_type: multiple_choice
doc_to_text: "{{{{context}}}} {{{{question}}}}"
doc_to_choice: "{{{{[ans0, ans1, ans2]}}}}"
doc_to_target: label
metric_list:
  - metric: acc
    aggregation: mean
    higher_is_better: true
metadata:
  version: 1.0
"""


def main() -> None:
    local(
        PKG / "crows_pairs" / "crows_pairs_english.yaml",
        "crows_pairs_english_local",
        "lm_eval.tasks.crows_pairs.utils",
        DATA / "crows_pairs_200.jsonl",
        {
            "tag:\n  - crows_pairs\n": "",
            "task: crows_pairs_english\n": "task: crows_pairs_english_local\n",
            "dataset_path: jannalu/crows_pairs_multilingual\n": "dataset_path: json\n",
            "dataset_name: english\n": "dataset_name: null\n",
        },
    )
    for part in ("p1", "p2"):
        local(
            PKG / "bbq" / "bbq_multiple_choice.yaml",
            f"bbq_local_{part}",
            "lm_eval.tasks.bbq.utils",
            DATA / f"bbq_150_{part}.jsonl",
            {
                "tag:\n  - social_bias\n": "",
                "task: bbq\n": f"task: bbq_local_{part}\n",
                "dataset_path: oskarvanderwal/bbq\n": "dataset_path: json\n",
                "dataset_name: All\n": "dataset_name: null\n",
            },
        )
    folder = TASKS / "bbq_alignlab_def"
    folder.mkdir(parents=True, exist_ok=True)
    data_file = json.dumps(str(DATA / "bbq_150.jsonl"))
    (folder / "bbq_alignlab_def.yaml").write_text(ALIGNLAB_DEF.format(data_file=data_file))


if __name__ == "__main__":
    main()
