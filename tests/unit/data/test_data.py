"""The preference/SFT data layer: every supported layout normalizes to one schema; every malformed row is named."""

from __future__ import annotations

import json

import pytest
from conftest import pair, write_jsonl
from omegaconf import OmegaConf

from alignlab import data
from alignlab.config import DataConfig, SourceConfig
from alignlab.errors import DataError

U = lambda text: [{"role": "user", "content": text}]  # noqa: E731
A = lambda text: [{"role": "assistant", "content": text}]  # noqa: E731


def load(path, kind="preference", tokenizer=None, **kw):
    src_keys = {"format", "split", "pku_choose_by", "max_rows", "columns"}
    source = OmegaConf.structured(SourceConfig(path=str(path), **{k: v for k, v in kw.items() if k in src_keys}))
    cfg = OmegaConf.structured(DataConfig(name="t", **{k: v for k, v in kw.items() if k not in src_keys}))
    return data.load(source, kind, cfg, tokenizer)


# ------------------------------------------------------------------------------------------ formats
def test_columns_map_a_files_own_names_onto_the_ones_alignlab_reads(tmp_path):
    own = [{"question": "What is 2+2?", "good": "4.", "bad": "5.", "id": 7}]
    mapping = {"prompt": "question", "chosen": "good", "rejected": "bad"}
    rows, report = load(write_jsonl(tmp_path / "q.jsonl", own), columns=mapping)
    assert report.format == "plain"
    assert rows == [{"prompt": U("What is 2+2?"), "chosen": A("4."), "rejected": A("5.")}]
    with pytest.raises(DataError, match=r"'prompt' is missing|cannot tell the preference format"):
        load(tmp_path / "q.jsonl")  # without the mapping
    ragged = write_jsonl(tmp_path / "r.jsonl", [*own, {"question": "Hi?", "good": "Hello."}, {"q": 1}])
    with pytest.raises(DataError) as err:
        load(ragged, columns=mapping)
    said = str(err.value)
    assert "2 of 3 rows lack a column named in data.*.columns" in said
    assert "r.jsonl line 2: no column 'bad'" in said and "r.jsonl line 3: no column 'question', 'good', 'bad'" in said


def test_columns_must_map_onto_a_column_alignlab_reads():
    from alignlab.config import compose_config, validate
    from alignlab.errors import ConfigError

    bad = ["experiment=tiny", "data=local", "data.preference.path=x.jsonl", "+data.preference.columns={question: q}"]
    with pytest.raises(ConfigError, match=r"data\.preference\.columns\.question.*no column alignlab reads"):
        validate(compose_config(bad))


def test_data_check_takes_the_same_mapping(tmp_path, capsys):
    from alignlab.cli import main

    path = tmp_path / "own.csv"
    path.write_text("question,good,bad\nq1?,a1.,b1.\nq2?,a2.,b2.\n")
    columns = ["--column", "prompt=question", "--column", "chosen=good", "--column", "rejected=bad"]
    assert main(["data", "check", str(path), *columns]) == 0
    assert "no malformed rows" in capsys.readouterr().out
    assert main(["data", "check", str(path), "--column", "prompt"]) == 2
    assert "write EXPECTED=FILES" in capsys.readouterr().err


def test_plain_strings_become_conversational(tmp_path):
    rows, report = load(write_jsonl(tmp_path / "p.jsonl", [pair("What is 2+2?", "4.", "5.")]))
    assert report.format == "plain"
    assert rows == [{"prompt": U("What is 2+2?"), "chosen": A("4."), "rejected": A("5.")}]


def test_plain_chosen_repeating_the_prompt_is_stripped(tmp_path):
    rows, _ = load(write_jsonl(tmp_path / "p.jsonl", [pair("Q: hi", "Q: hi Hello!", "Q: hi Bye.")]))
    assert rows[0]["chosen"] == A("Hello!") and rows[0]["rejected"] == A("Bye.")


def test_conversational_ultrafeedback_style(tmp_path):
    row = {"prompt": [{"role": "system", "content": "Be kind."}, *U("Hi")], "chosen": A("Hello!"), "rejected": A("No.")}
    rows, report = load(write_jsonl(tmp_path / "c.jsonl", [row]))
    assert report.format == "conversational" and rows[0] == row


def test_implicit_prompt_conversations(tmp_path):
    row = {"chosen": U("Hi") + A("Hello!"), "rejected": U("Hi") + A("Go.")}
    rows, _ = load(write_jsonl(tmp_path / "c.jsonl", [row]))
    assert rows[0] == {"prompt": U("Hi"), "chosen": A("Hello!"), "rejected": A("Go.")}


def test_hh_rlhf_transcripts_shared_prefix_becomes_prompt(tmp_path):
    prefix = "\n\nHuman: How do I bake bread?\n\nAssistant: With flour.\n\nHuman: And then?"
    row = {"chosen": prefix + "\n\nAssistant: Knead and bake it.", "rejected": prefix + "\n\nAssistant: Dunno."}
    rows, report = load(write_jsonl(tmp_path / "hh.jsonl", [row]))
    assert report.format == "hh"
    assert rows[0]["prompt"] == U("How do I bake bread?") + A("With flour.") + U("And then?")
    assert rows[0]["chosen"] == A("Knead and bake it.") and rows[0]["rejected"] == A("Dunno.")


@pytest.mark.parametrize(("choose_by", "chosen"), [("better", "Detailed answer."), ("safer", "Safe answer.")])
def test_pku_saferlhf_by_helpfulness_or_safety(tmp_path, choose_by, chosen):
    row = {
        "prompt": "How?",
        "response_0": "Safe answer.",
        "response_1": "Detailed answer.",
        "is_response_0_safe": True,
        "is_response_1_safe": False,
        "better_response_id": 1,
        "safer_response_id": 0,
    }
    rows, report = load(write_jsonl(tmp_path / "pku.jsonl", [row]), pku_choose_by=choose_by)
    assert report.format == "pku" and rows[0]["chosen"] == A(chosen)


def test_sft_prompt_completion_and_messages(tmp_path):
    rows, _ = load(write_jsonl(tmp_path / "s.jsonl", [{"prompt": "Hi", "completion": "Hello."}]), kind="sft")
    assert rows == [{"prompt": U("Hi"), "completion": A("Hello.")}]
    msgs = U("a") + A("b") + U("c") + A("d")
    rows, report = load(write_jsonl(tmp_path / "m.jsonl", [{"messages": msgs}]), kind="sft")
    assert report.format == "messages" and rows == [{"prompt": msgs[:3], "completion": msgs[3:]}]


# --------------------------------------------------------------------------------------- file types
ROWS = [pair("one?", "1.", "2."), pair("two?", "2.", "3.")]


def _expected():
    return [{"prompt": U(r["prompt"]), "chosen": A(r["chosen"]), "rejected": A(r["rejected"])} for r in ROWS]


def test_json_csv_parquet_and_save_to_disk(tmp_path):
    import datasets
    import pandas as pd

    (tmp_path / "d.json").write_text(json.dumps(ROWS))
    pd.DataFrame(ROWS).to_csv(tmp_path / "d.csv", index=False)
    pd.DataFrame(ROWS).to_parquet(tmp_path / "d.parquet")
    datasets.Dataset.from_list(ROWS).save_to_disk(str(tmp_path / "saved"))
    datasets.DatasetDict({"train": datasets.Dataset.from_list(ROWS)}).save_to_disk(str(tmp_path / "saved_dict"))
    for name in ("d.json", "d.csv", "d.parquet", "saved", "saved_dict"):
        rows, _ = load(tmp_path / name)
        assert rows == _expected(), name


def test_conversational_csv_cells_hold_json(tmp_path):
    import pandas as pd

    row = {"prompt": json.dumps(U("Hi")), "chosen": json.dumps(A("Hello")), "rejected": json.dumps(A("No"))}
    pd.DataFrame([row]).to_csv(tmp_path / "c.csv", index=False)
    rows, report = load(tmp_path / "c.csv")
    assert report.format == "conversational" and rows[0]["prompt"] == U("Hi")


def test_hub_layout_folder_goes_through_load_dataset(tmp_path):
    """A folder laid out like a Hub dataset repo (data/train-*.parquet): the same `load_dataset` path as an id."""
    import pandas as pd

    (tmp_path / "repo" / "data").mkdir(parents=True)
    pd.DataFrame(ROWS).to_parquet(tmp_path / "repo" / "data" / "train-00000-of-00001.parquet")
    rows, _ = load(tmp_path / "repo")
    assert rows == _expected()


def test_hub_id_offline_fails_clearly():
    with pytest.raises(DataError, match=r"Hub dataset 'nobody-xyz/no-such-set'.*offline"):
        load("nobody-xyz/no-such-set")


def test_hub_id_is_passed_to_load_dataset(monkeypatch):
    import datasets

    calls = []

    def fake_load_dataset(repo, subset, split, revision):
        calls.append((repo, subset, split, revision))
        return datasets.Dataset.from_list(ROWS)

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    source = OmegaConf.structured(SourceConfig(path="org/prefs", split="test", subset="main", revision="v1"))
    rows, _ = data.load(source, "preference", OmegaConf.structured(DataConfig(name="t")), None)
    assert calls == [("org/prefs", "main", "test", "v1")] and rows == _expected()


def test_bundled_tiny_pairs_are_valid(tiny_tokenizer):
    rows, report = load("pkg://alignlab/assets/tiny/prefs.jsonl", tokenizer=tiny_tokenizer, max_length=256)
    assert report.rows_kept == len(rows) >= 50 and report.duplicates == 0 and report.overlength == 0


# ------------------------------------------------------------------------------------- bad rows
BAD_ROWS = [
    ({"prompt": "Hi", "chosen": "Yes."}, "'rejected' is missing"),
    (pair(chosen=""), "'chosen' is empty"),
    (pair(chosen="Same.", rejected="Same."), "identical"),
    ({"prompt": U("Hi"), "chosen": [{"role": "robot", "content": "x"}], "rejected": A("y")}, "role 'robot'"),
    ({"prompt": A("I start"), "chosen": A("x"), "rejected": A("y")}, "should end with a user turn"),
    ({"prompt": U("Hi"), "chosen": U("x"), "rejected": A("y")}, "assistant turns only"),
    ({"prompt": U("Hi"), "chosen": A(""), "rejected": A("y")}, "empty content"),
    ({"prompt": 5, "chosen": "x", "rejected": "y"}, "'prompt' should be a string"),
    ({"prompt": U("Hi"), "chosen": "x", "rejected": "y"}, "'prompt' is a message list but this file's rows"),
]


@pytest.mark.parametrize(("bad", "message"), BAD_ROWS)
def test_malformed_row_named_with_file_and_line(tmp_path, bad, message):
    conv = isinstance(bad.get("chosen"), list)
    good = {"prompt": U("Fine?"), "chosen": A("Yes."), "rejected": A("No.")} if conv else pair("Fine?", "Yes.", "No.")
    path = write_jsonl(tmp_path / "bad.jsonl", [good, good | {"prompt": U("Other?") if conv else "Other?"}, bad])
    with pytest.raises(DataError) as err:
        load(path)
    assert "bad.jsonl line 3" in str(err.value) and message in str(err.value)


def test_many_bad_rows_are_counted(tmp_path):
    path = write_jsonl(tmp_path / "bad.jsonl", [pair(chosen="") for _ in range(20)])
    with pytest.raises(DataError, match=r"20 of 20 rows are malformed.*and 12 more"):
        load(path)


def test_non_utf8_bytes_name_the_line(tmp_path):
    path = tmp_path / "latin.jsonl"
    path.write_bytes(json.dumps(pair()).encode() + b"\n" + b'{"prompt": "caf\xe9", "chosen": "a", "rejected": "b"}\n')
    with pytest.raises(DataError, match=r"latin.jsonl' line 2: bytes that are not UTF-8"):
        load(path)


def test_broken_json_line(tmp_path):
    path = tmp_path / "broken.jsonl"
    path.write_text(json.dumps(pair()) + "\n" + '{"prompt": "x", "chosen": \n')
    with pytest.raises(DataError, match=r"broken.jsonl line 2: not valid JSON"):
        load(path)


def test_broken_lines_and_bad_rows_are_reported_in_one_pass(tmp_path):
    """A line that is not JSON is one more malformed row beside the rows' own problems, not the end of the check."""
    path = tmp_path / "mixed.jsonl"
    rows = [pair(), '{"prompt": "x", "chosen": ', pair(chosen=""), pair("Other?"), "[1, 2]"]
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    with pytest.raises(DataError) as err:
        load(path)
    said = str(err.value)
    assert "3 of 5 rows are malformed" in said
    assert "mixed.jsonl line 2: not valid JSON" in said and "mixed.jsonl line 3: 'chosen' is empty" in said
    assert "mixed.jsonl line 5: expected a JSON object, got list" in said
    only = tmp_path / "broken-only.jsonl"
    only.write_text('{"prompt": \n')
    with pytest.raises(DataError, match=r"1 of 1 rows are malformed.*broken-only.jsonl line 1: not valid JSON"):
        load(only)  # nothing but broken lines: still every line named, not "has no rows"


def test_hh_transcript_without_turns(tmp_path):
    path = write_jsonl(tmp_path / "hh.jsonl", [{"chosen": "just text", "rejected": "other text"}])
    with pytest.raises(DataError, match=r"hh\.jsonl line 1: 'chosen' is not an HH-RLHF transcript"):
        load(path)


def test_pku_bad_preference_id(tmp_path):
    row = {"prompt": "p", "response_0": "a", "response_1": "b", "better_response_id": 2, "safer_response_id": 0}
    with pytest.raises(DataError, match="'better_response_id' should be 0 or 1"):
        load(write_jsonl(tmp_path / "pku.jsonl", [row]))


def test_unknown_columns_and_missing_files(tmp_path):
    with pytest.raises(DataError, match="cannot tell the preference format"):
        load(write_jsonl(tmp_path / "x.jsonl", [{"question": "q", "answer": "a"}]))
    with pytest.raises(DataError, match="does not exist"):
        load(tmp_path / "nowhere.jsonl")
    (tmp_path / "d.txt").write_text("hello")
    with pytest.raises(DataError, match="unsupported extension"):
        load(tmp_path / "d.txt")
    (tmp_path / "empty.jsonl").write_text("")
    with pytest.raises(DataError, match="has no rows"):
        load(tmp_path / "empty.jsonl")


# -------------------------------------------------------------------------- duplicates and lengths
def test_duplicates_dropped_kept_or_refused(tmp_path):
    path = write_jsonl(tmp_path / "dup.jsonl", [pair(), pair("Other?"), pair()])
    rows, report = load(path)
    assert len(rows) == 2 and report.duplicates == 1
    rows, _ = load(path, on_duplicate="keep")
    assert len(rows) == 3
    with pytest.raises(DataError, match=r"dup.jsonl line 3: duplicate of dup.jsonl line 1"):
        load(path, on_duplicate="error")


def test_overlength_truncated_dropped_or_refused(tmp_path, tiny_tokenizer):
    long = pair("Tell me.", "word " * 200, "No.")
    path = write_jsonl(tmp_path / "long.jsonl", [pair(), long])
    rows, report = load(path, tokenizer=tiny_tokenizer, max_length=64)
    assert len(rows) == 2 and report.overlength == 1 and report.overlength_action == "truncate"
    rows, report = load(path, tokenizer=tiny_tokenizer, max_length=64, on_overlength="drop")
    assert len(rows) == 1 and report.overlength == 1
    with pytest.raises(DataError, match=r"long.jsonl line 2: \d+ tokens, over data.max_length=64"):
        load(path, tokenizer=tiny_tokenizer, max_length=64, on_overlength="error")


def test_truncate_cuts_a_prompt_that_fills_the_window_from_its_start(tmp_path, tiny_tokenizer):
    """truncate keeps the row: the prompt loses its start (the question, at its end, stays) down to half the
    window, so the reply keeps the other half; drop drops it."""
    question = " ".join(f"w{i}" for i in range(300)) + " So, what is the answer?"
    path = write_jsonl(tmp_path / "p.jsonl", [pair(), pair(question, "Forty-two.", "No idea.")])
    rows, report = load(path, tokenizer=tiny_tokenizer, max_length=64)
    assert len(rows) == 2 and report.overlength == 1 and report.prompts_cut == 1
    cut = rows[1]["prompt"][-1]["content"]
    assert question.endswith(cut) and cut.endswith("So, what is the answer?") and not cut.startswith("w0 ")
    assert not cut.split(" ")[0] or f" {cut.split(' ')[0]} " in f" {question} "  # starts at a whole word
    templated = tiny_tokenizer.apply_chat_template(rows[1]["prompt"], add_generation_prompt=True, tokenize=True)
    assert len(templated if isinstance(templated, list) else templated["input_ids"]) <= 32
    assert rows[1]["chosen"] == A("Forty-two.")  # the replies are the trainer's to cut
    rows, report = load(path, tokenizer=tiny_tokenizer, max_length=64, on_overlength="drop")
    assert len(rows) == 1 and report.prompts_cut == 0


def test_earlier_turns_go_before_the_last_message_is_cut(tmp_path, tiny_tokenizer):
    turns = [*U("word " * 100), *A("ok"), *U("Now the real question?")]
    path = write_jsonl(tmp_path / "t.jsonl", [{"prompt": turns, "chosen": A("Yes."), "rejected": A("No.")}])
    rows, report = load(path, tokenizer=tiny_tokenizer, max_length=64)
    assert report.prompts_cut == 1 and rows[0]["prompt"] == U("Now the real question?")


def test_data_check_with_a_tiny_window_keeps_its_rows(tmp_path, capsys, tiny_model):
    from alignlab.cli import main

    path = write_jsonl(tmp_path / "p.jsonl", [pair(f"Question number {i}, asked at some length?") for i in range(4)])
    assert main(["data", "check", str(path), "--tokenizer", tiny_model, "--max-length", "16", "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["rows_kept"] == 4 and summary["prompts_cut"] == 4, summary


def test_sft_source_must_have_sft_format(tmp_path):
    with pytest.raises(DataError, match="read as sft data"):
        load(write_jsonl(tmp_path / "p.jsonl", [pair()]), kind="sft", format="plain")


def test_max_rows(tmp_path):
    rows, report = load(write_jsonl(tmp_path / "p.jsonl", [pair(f"q{i}?") for i in range(10)]), max_rows=3)
    assert len(rows) == 3 and report.rows_read == 3


def test_data_check_cli(tmp_path, capsys, tiny_model):
    from alignlab.cli import main

    path = write_jsonl(tmp_path / "p.jsonl", [pair(), pair(), pair("x?")])
    assert main(["data", "check", str(path), "--tokenizer", tiny_model, "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["rows_read"] == 3 and summary["rows_kept"] == 2 and summary["duplicates"] == 1
    assert summary["tokens_max"] > 0
    bad = write_jsonl(tmp_path / "bad.jsonl", [pair(chosen="")])
    assert main(["data", "check", str(bad)]) == 2
    assert "bad.jsonl line 1" in capsys.readouterr().err
