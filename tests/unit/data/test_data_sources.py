"""Hostile data files: each is refused with an error naming the file and the line, never read into rows that
train silently wrong, and never a traceback (data/sources.py)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from alignlab.data.sources import read_rows
from alignlab.errors import DataError

GOOD = '{"prompt": "Hi?", "chosen": "Hello.", "rejected": "Go away."}'


def _file(tmp_path: Path, name: str, text: str) -> str:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return str(path)


@pytest.mark.parametrize(
    ("line", "reason"),
    [
        ('{"prompt": "a", "chosen": "b", "rejected": "c", "chosen": "d"}', "the key 'chosen' appears twice"),
        ('{"prompt": "a", "chosen": "b", "rejected": "c", "score": NaN}', "NaN is not a number JSON allows"),
        ('{"prompt": "a", "chosen": "b", "rejected": "c", "score": -Infinity}', "-Infinity is not a number"),
        ('{"prompt": "a\\ud800", "chosen": "b", "rejected": "c"}', "text with a lone UTF-16 surrogate"),
        ('{"prompt": "a", "chosen": "b", "rejected": "c", "n": ' + "9" * 5000 + "}", "a value JSON cannot hold"),
        ("[" * 100_000 + "]" * 100_000, "JSON nested too deeply"),
        ('{"prompt": "a", "chosen": "b"', "not valid JSON"),
        ('["prompt", "chosen"]', "expected a JSON object, got list"),
    ],
    ids=["duplicate-key", "nan", "infinity", "lone-surrogate", "huge-int", "deep-nesting", "broken", "not-object"],
)
def test_a_bad_jsonl_line_is_named(tmp_path, line, reason):
    path = _file(tmp_path, "pairs.jsonl", f"{GOOD}\n{line}\n{GOOD}\n")
    with pytest.raises(DataError) as err:
        read_rows(path)
    assert f"pairs.jsonl' line 2: {reason}" in str(err.value)


def test_every_bad_line_is_reported_in_one_pass(tmp_path):
    lines = [GOOD, "{broken", GOOD, '{"a": 1, "a": 2}', "[1]", *(["{"] * 12)]
    path = _file(tmp_path, "pairs.jsonl", "\n".join(lines) + "\n")
    with pytest.raises(DataError) as err:
        read_rows(path)
    message = str(err.value)
    assert "15 bad lines" in message and "line 2: not valid JSON" in message and "line 4: the key 'a'" in message
    assert "line 5: expected a JSON object" in message and "and 5 more" in message


def test_a_line_separator_inside_a_string_is_text_not_a_new_line(tmp_path):
    """U+2028 is valid inside a JSON string; `str.splitlines` would cut the line there and call it broken."""
    row = {"prompt": "one\u2028two", "chosen": "b\u0085c", "rejected": "d"}
    path = _file(tmp_path, "pairs.jsonl", json.dumps(row, ensure_ascii=False) + "\r\n" + GOOD + "\n")
    rows = read_rows(path)
    assert [r.data for r in rows] == [row, json.loads(GOOD)]
    assert rows[1].where == "pairs.jsonl line 2"


def test_a_json_file_with_a_duplicate_key_is_refused(tmp_path):
    path = _file(tmp_path, "pairs.json", '[{"prompt": "a", "prompt": "b", "chosen": "c", "rejected": "d"}]')
    with pytest.raises(DataError, match=r"pairs\.json': the key 'prompt' appears twice"):
        read_rows(path)


def test_an_unclosed_csv_quote_does_not_swallow_the_rows_after_it(tmp_path):
    text = 'prompt,chosen,rejected\na,b,c\n"d,e,f\ng,h,i\nj,k,l\n'
    with pytest.raises(DataError, match=r"pairs\.csv' line 3: not valid CSV: a quoted cell is never closed"):
        read_rows(_file(tmp_path, "pairs.csv", text))


def test_csv_rows_must_have_the_header_s_fields(tmp_path):
    text = "prompt,chosen,rejected\na,b,c\nd,e,f,extra\ng,h\n"
    with pytest.raises(DataError) as err:
        read_rows(_file(tmp_path, "pairs.csv", text))
    message = str(err.value)
    assert "2 bad lines" in message
    assert "line 3: 4 fields where the header has 3" in message and "line 4: 2 fields" in message


def test_a_huge_csv_cell_is_named(tmp_path):
    text = "prompt,chosen,rejected\n" + "a," + "b" * 1_500_000 + ",c\n"
    with pytest.raises(DataError, match=r"pairs\.csv' line 2: not valid CSV: a cell over 1000000 characters"):
        read_rows(_file(tmp_path, "pairs.csv", text))


def test_a_csv_byte_order_mark_is_not_part_of_the_first_column(tmp_path):
    path = tmp_path / "pairs.csv"
    path.write_bytes("prompt,chosen,rejected\na,b,c\n".encode("utf-8-sig"))
    (row,) = read_rows(str(path))
    assert row.data == {"prompt": "a", "chosen": "b", "rejected": "c"} and row.where == "pairs.csv line 2"


def test_a_quoted_multiline_csv_cell_keeps_its_row_and_the_next_row_s_line(tmp_path):
    text = 'prompt,chosen,rejected\n"two\nlines",b,c\nd,e,f\n'
    rows = read_rows(_file(tmp_path, "pairs.csv", text))
    assert [r.data["prompt"] for r in rows] == ["two\nlines", "d"]
    assert [r.where for r in rows] == ["pairs.csv line 2", "pairs.csv line 4"]
