"""Issue 11, point 10: a user's tag regex cannot make the engine spin. Patterns are bounded and checked for
the shapes that backtrack exponentially; the input is bounded by the tag grammar (128 characters)."""

from __future__ import annotations

import re
import time

import pytest

from imagesync.engine.errors import RuleError
from imagesync.engine.reference import ReferenceError
from imagesync.engine.rules import MAX_REGEX_LENGTH, check_tag_regex, expand_rule, parse_rules

ACCEPTED = [r"^v1\.[0-9]+$", r"(a|b)*c", r"^(v[0-9]+(\.[0-9]+)*)$", r"[a-z]+(-[a-z0-9]+)*", r".*foo.*",
            r"^v?\d+\.\d+\.\d+(-rc\d+)?$", r"^(\d+\.){3}\d+$", r"latest|stable", r"^[0-9]+(\.[0-9]+)+-alpine$",
            r"^(1\.2[0-9]|1\.3[0-9])\.[0-9]+$", r"alpine"]
REFUSED = [(r"(a+)+b", "inside a repetition"), (r"(a*)*", "inside a repetition"), (r"(aa*)*$", "inside"),
           (r"(.*a){20}", "inside a repetition"), (r"(x+x+)+y", "inside a repetition"),
           (r"(a|b|ab)*c", "alternatives"), (r".*.*.*x", "three unbounded"), (r"\d*\d*\d*\d*x", "three"),
           (r"(a)\1", "backreferences"), (r"(?=v)v1", "lookarounds"), (r"(?!rc).*", "lookarounds"),
           (r"(a)?(?(1)b|c)", "conditional"), ("a" * (MAX_REGEX_LENGTH + 1), "longer than")]


@pytest.mark.parametrize("regex", ACCEPTED)
def test_usual_tag_regexes_are_accepted(regex: str) -> None:
    assert check_tag_regex(regex).pattern == regex
    rules, errors = parse_rules({f"r.io/a/app:/{regex}/": "t.io/a/app"})
    assert errors == [] and rules[0].source.regex == regex


@pytest.mark.parametrize(("regex", "why"), REFUSED)
def test_backtracking_shapes_are_refused_as_rule_errors(regex: str, why: str) -> None:
    with pytest.raises(ReferenceError, match=why):
        check_tag_regex(regex)
    rules, errors = parse_rules({f"r.io/a/app:/{regex}/": "t.io/a/app", "r.io/a/ok:1": "t.io/a/ok"})
    assert len(rules) == 1 and len(errors) == 1 and why in errors[0].reason  # the other rule still runs
    assert isinstance(errors[0], RuleError)


def test_refusing_costs_nothing_and_accepted_patterns_are_fast_on_worst_case_tags() -> None:
    started = time.monotonic()
    for regex, _ in REFUSED:
        with pytest.raises(ReferenceError):
            check_tag_regex(regex)
    tags = ["a" * 127 + "!", "1" * 128, "v" + "1." * 63 + "x", "-" * 128, "." * 128]
    for regex in ACCEPTED:
        pattern = check_tag_regex(regex)
        for tag in tags:
            pattern.search(tag)
    assert time.monotonic() - started < 2.0


def test_tags_longer_than_the_grammar_allows_never_reach_the_regex() -> None:
    (rule,), _ = parse_rules({"r.io/a/app:/^a+$/": "t.io/a/app"})
    pairs = expand_rule(rule, ["a" * 128, "a" * 129, "a"])
    assert sorted(len(p.source.tag or "") for p in pairs) == [1, 128]
    assert re.fullmatch(rule.source.regex or "", "a" * 129)  # the regex itself would have matched it
