"""RE2 (canary.core.re2): the patterns Python compiles that a gateway's RE2 refuses or reads otherwise.

The verdicts are Go's: each pattern below was parsed with regexp/syntax (Perl flags), the parser
Traefik uses and whose syntax Envoy Gateway's RE2 shares. Every pattern here compiles in Python.
"""

from __future__ import annotations

import re
import warnings

import pytest

from canary.core.re2 import beyond_re2

# RE2 parses these as Python does
ACCEPTED = [
    r"^beta$", r"\Abeta", ".*Firefox.*", "^(yes|1)$", r"^(.*;\s*)?canary\-affinity=r1\.2(;.*)?$", r"\bbeta\B", r"\d\D\s\S\w\W",
    r"\a\f\n\r\t\v", r"\x41", r"\0", r"\012", r"\177", r"\-\=\;\ \#\&\~\"\'\/\<\>\@\%\!\,\:\_\`", "\\\t",
    r"[\-\]]", r"[\0]", r"[\012]", r"[\12]", r"[\a]", r"[\w\d\s]", r"[\x41-\x5a]", r"[\[]", "[]a]", "[^]a]", "[a-]",
    "(?i)beta", "(?m)^b", "(?s).", "(?ims)b", "(?i:b)", "(?-i:b)", "(?i-s:b)", "(?im-s:x)", "(?P<n>b)", "(?P<n1_x>b)", "(?P<_>b)", "(?:b)",
    "a{0}", "a{0,0}", "a{3}", "a{3,}", "a{0,3}", "a{1000}", "a{1000,}", "a{0,1000}", "a{2}b{1000}", "a*?", "a{1,2}?",
    "(a{1000}){1}", "(a{1}){1000}", "((a{10}){10}){10}", "(?:a{2}){500}", "(?:a{3}){333}", "(?:a{2}|b{3}){300}", "(?:a{2,}){500}",
    "(?:a{5}){200,}", "(?:a{5}){0,200}", "(?:(?:a{2}){2}){250}", "(?:a+){1000}", "(?:a*){1000}", "(?:a?){1000}", "(?:a{0,1}){1000}",
    "(?:a{1,}){1000}", "(?:a{0,}){1000}", "((a{2}){0}){1000}", "a|", "(|a)", "()", "a{", "a{x}", "a{ 1}", "{",
]

# RE2 refuses these (Go's error in the comment)
REFUSED = [
    (r"^beta\Z", r"\\Z"),  # invalid escape sequence: \Z
    (r"\u00e9", r"a \\u escape"),  # invalid escape sequence: \u
    (r"\U0001F600", r"a \\U escape"),
    (r"\N{LATIN SMALL LETTER E WITH ACUTE}", r"a \\N\{\.\.\.\} named character"),
    (r"[\u00e9]", r"a \\u escape"), (r"[\U0001F600]", r"a \\U escape"), (r"[\N{DIGIT ONE}]", r"\\N"),
    ("\\\u00e9", "the escaped character \\\\\u00e9"), ("\\\u00a0", "the escaped character"), ("[\\\u00e9-\\\u00ff]", "the escaped character"),
    (r"[\b]", r"\\b in a character class"),  # invalid escape sequence: \b
    (r"[\1]", r"one-digit octal escape \\1"),  # invalid escape sequence: \1
    ("(?x) beta", r"inline flag x \(verbose mode\)"),  # invalid or unsupported Perl syntax: (?x
    ("(?x:b c)", "inline flag x"), ("(?-x:b)", "inline flag x"),
    ("(?a)beta", r"inline flag a \(ASCII-only"), ("(?a:b)", "inline flag a"),
    ("(?u)beta", r"inline flag u \(Unicode"), ("(?u:b)", "inline flag u"),
    ("(?#note)beta", r"a \(\?#\.\.\.\) comment"),  # invalid or unsupported Perl syntax: (?#
    ("(?P<n\u00e9>b)", "the group name"),  # invalid named capture
    ("(?=b)", "a lookahead or lookbehind"), ("(?<=b)", "a lookahead or lookbehind"), ("(?!b)", "a negative lookahead"),
    ("(?<!b)", "a negative lookahead"), ("(?>b)", "an atomic group"), ("(a)?(?(1)b|c)", "a conditional group"),
    (r"(a)\1", "a backreference"), ("(?P<n>b)(?P=n)", "a backreference"),
    ("a*+", "a possessive quantifier"), ("a++", "a possessive quantifier"), ("a?+", "a possessive quantifier"), ("a{1,2}+", "a possessive quantifier"),
    ("a{1001}", "the repetition count 1001"),  # invalid repeat count
    ("a{0,1001}", "the repetition count 1001"), ("a{1001,}", "the repetition count 1001"),
    ("(a{100}){100}", "nested to more than 1000"), ("(a{1000}){1000}", "the repetition count|nested"), ("((a{10}){10}){11}", "nested"),
    ("(?:a{2}){501}", "nested"), ("(?:a{3}){334}", "nested"), ("(?:a{4}){300}", "nested"), ("(?:a{2,}){600}", "nested"),
    ("(?:a{5}){0,201}", "nested"), ("(?:a{5}){201,}", "nested"), ("(?:(?:a{2}){2}){251}", "nested"),
]

# RE2 takes these, but as literal text where Python reads a repetition: refused too, with the spelling to use
READ_AS_TEXT = [("a{,3}", "{0,3}"), ("a{,}", "{0,}"), ("a{01}", "{1}"), ("a{00}", "{0}"), ("a{1,02}", "{1,2}")]

# Python warns that it reads [[:...:]] as a set of characters; RE2 reads a POSIX class
POSIX = [("[[:alpha:]]", None), ("[[:^alpha:]]", None), ("[a[:digit:]-]", None), ("[[:foo:]]", r"the POSIX class \[:foo:\]")]


@pytest.mark.parametrize("pattern", ACCEPTED)
def test_what_re2_parses_as_python_does_is_accepted(pattern: str) -> None:
    re.compile(pattern)
    assert beyond_re2(pattern) is None


@pytest.mark.parametrize(("pattern", "named"), REFUSED)
def test_what_re2_refuses_is_named(pattern: str, named: str) -> None:
    re.compile(pattern)
    found = beyond_re2(pattern)
    assert found is not None and re.search(named, found), found


@pytest.mark.parametrize(("pattern", "spelling"), READ_AS_TEXT)
def test_a_count_re2_reads_as_text_is_refused_with_the_spelling_it_reads(pattern: str, spelling: str) -> None:
    found = beyond_re2(pattern)
    assert found is not None and "which RE2 reads as the literal text" in found and found.endswith(f"(write {spelling})")


@pytest.mark.parametrize(("pattern", "named"), POSIX)
def test_posix_classes_are_re2s_and_an_unknown_one_is_refused(pattern: str, named: str | None) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        found = beyond_re2(pattern)
    assert (found is None) if named is None else (found is not None and re.search(named, found))


def test_a_pattern_nested_beyond_what_the_check_can_walk_is_refused_not_a_traceback() -> None:
    assert beyond_re2("(" * 600 + "a" + ")" * 600) == "groups nested too deeply to be checked"
