"""Degenerate replies (evaluation/degenerate.py): each kind against hand-picked replies, and real answers spared,
short ones, lists and code included."""

from __future__ import annotations

import pytest

from alignlab.evaluation.degenerate import EMPTY, LOOP, NOT_TEXT, degenerate


@pytest.mark.parametrize(
    ("reply", "kind"),
    [
        ("", EMPTY),
        ("  \n\t ", EMPTY),
        ("\ufffd\ufffd abc", NOT_TEXT),  # undecodable bytes
        ("}}}{{{ ### 1234 !!", NOT_TEXT),
        ("the the the the the the the the the the the the", LOOP),
        ("I I I I I I can can can can can can", LOOP),
        ("No.", None),
        ("I can't help with that.", None),
        ("1. Open Task Manager. 2. Find the process. 3. Click End task.", None),
        ("Use `kill -9 1234` to stop process 1234.", None),
        ("Sure! Here is a short poem about the sea and the sky and the sea again.", None),
    ],
)
def test_each_kind_of_non_answer_and_real_answers_spared(reply, kind):
    assert degenerate(reply) == kind
