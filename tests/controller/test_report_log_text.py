"""What the operator's log says of a refused report stays one short line (controller/reports.py: clip and the
way a bad value is shown). Written against survivors of the mutation run (docs/reliability.md)."""

from __future__ import annotations

from imagesync.controller.reports import MAX_LOG, _show, clip


def test_clip_keeps_short_text_and_cuts_long_text_to_the_limit() -> None:
    assert clip("x" * MAX_LOG) == "x" * MAX_LOG
    cut = clip("x" * (MAX_LOG + 1))
    assert len(cut) == MAX_LOG and cut == "x" * (MAX_LOG - 1) + "…"
    assert clip("abcdef", 4) == "abc…"


def test_clip_folds_lines_and_runs_of_blanks() -> None:
    assert clip("first line\nsecond") == "first line second"
    assert clip("first\r  second") == "first second"
    assert clip("no  newline") == "no  newline"  # one line already: left as it is


def test_a_bad_value_is_shown_in_at_most_60_characters() -> None:
    assert _show("a" * 10) == repr("a" * 10)
    shown = _show("a" * 100)
    assert len(shown) == 60 and shown.endswith("…")
    assert _show(10**39) == str(10**39)
    assert _show(10**40) == "an integer of 41 digits"
    assert _show(-(10**50)) == "an integer of 51 digits"
    assert _show(True) == "True"
