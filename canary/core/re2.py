"""RE2: which regular expressions that Python compiles a gateway cannot take.

Pure. The Gateway API's ``RegularExpression`` matches run on RE2 syntax (Go's
``regexp`` in Traefik, RE2 in Envoy Gateway); a pattern RE2 refuses makes the
gateway drop the rule, and a few spellings RE2 reads as literal text match
something else than Python says. ``beyond_re2`` names the first of those in a
pattern that Python's ``re`` compiles, so that the spec can refuse it before
anything is applied.

Two passes: Python's parse tree for what it keeps (lookaround, backreferences,
repetition counts), and the pattern's text for what the parse tree no longer
shows (escapes that became literals, inline flags, comments, group names,
POSIX classes, repetitions RE2 reads as text). The rules follow Go's
``regexp/syntax`` with Perl flags.
"""

from __future__ import annotations

import re
from re import _parser  # the parser re.compile uses: its opcodes name each construct
from typing import Any

_LACKS = "which RE2 (the gateway's regular expressions) does not have"

#: what Python's parse tree keeps and RE2 has not, by opcode
_OPCODES = {"ASSERT": "a lookahead or lookbehind", "ASSERT_NOT": "a negative lookahead or lookbehind", "GROUPREF": "a backreference",
            "GROUPREF_EXISTS": "a conditional group", "ATOMIC_GROUP": "an atomic group", "POSSESSIVE_REPEAT": "a possessive quantifier"}
_REPEATS = {"MAX_REPEAT", "MIN_REPEAT", "POSSESSIVE_REPEAT"}
#: RE2's largest repetition count, and the largest product of nested counts
_MAX_REPEAT = 1000
_FLAGS = {"a": "ASCII-only matching", "L": "locale-dependent matching", "u": "Unicode matching", "x": "verbose mode"}
_ESCAPES = {"u": "a \\u escape", "U": "a \\U escape", "N": "a \\N{...} named character"}
_POSIX = {"alnum", "alpha", "ascii", "blank", "cntrl", "digit", "graph", "lower", "print", "punct", "space", "upper", "word", "xdigit"}
#: a count in braces as Python reads it: {n}, {n,}, {,m}, {n,m}
_COUNT = re.compile(r"\{(\d*)(?:(,)(\d*))?\}")


def beyond_re2(pattern: str) -> str | None:
    """What in ``pattern`` (which Python's ``re`` compiles) RE2 refuses or reads otherwise, as the
    phrase that follows "uses"; None when RE2 takes it as Python does."""
    try:
        return _in_text(pattern) or _in_tree(_parser.parse(pattern), _MAX_REPEAT)
    except RecursionError:
        return "groups nested too deeply to be checked"


def _in_tree(items: Any, budget: int) -> str | None:
    """The first construct of a parsed pattern RE2 lacks. ``budget``: the largest count a repetition
    may have here, 1000 divided by the counts of the repetitions around it (RE2's rule for nesting)."""
    for op, arg in items:
        name = str(op)
        if found := _OPCODES.get(name):
            return f"{found}, {_LACKS}"
        inner = budget
        if name in _REPEATS:
            low, high = arg[0], arg[1]
            unbounded = high == _parser.MAXREPEAT
            if low > _MAX_REPEAT or (not unbounded and high > _MAX_REPEAT):
                return f"the repetition count {low if low > _MAX_REPEAT else high}, above RE2's limit of {_MAX_REPEAT}"
            count = low if unbounded else high
            if high == 0:
                inner = _MAX_REPEAT  # x{0}: RE2 checks what is inside on its own
            elif count > budget:
                return f"repetitions nested to more than {_MAX_REPEAT} in all, above RE2's limit (the counts multiply)"
            elif count > 0:
                inner = budget // count
        for sub in _subpatterns(arg):
            if found := _in_tree(sub, inner):
                return found
    return None


def _subpatterns(arg: Any) -> list[Any]:
    if isinstance(arg, _parser.SubPattern):
        return [arg]
    if isinstance(arg, tuple | list):
        return [sub for part in arg for sub in _subpatterns(part)]
    return []


def _in_text(pattern: str) -> str | None:
    """The first construct of ``pattern``'s text that RE2 refuses or reads as something else: what
    Python's parse tree no longer shows. ``pattern`` compiles in Python, so its brackets balance."""
    i, n = 0, len(pattern)
    while i < n:
        c = pattern[i]
        if c == "\\":
            if found := _escape(pattern, i, in_class=False):
                return found
            i += 2
        elif c == "[":
            found, i = _class(pattern, i)
            if found:
                return found
        elif c == "(" and pattern.startswith("(?", i):
            if found := _group(pattern, i):
                return found
            i += 2
        elif c == "{" and (count := _COUNT.match(pattern, i)):
            low, comma, high = count.groups()
            if comma and not low or any(len(d) > 1 and d[0] == "0" for d in (low, high or "")):
                fixed = "{" + str(int(low or 0)) + (("," + (str(int(high)) if high else "")) if comma else "") + "}"
                return f"the count {count.group()}, which RE2 reads as the literal text {count.group()!r}, not as a repetition (write {fixed})"
            i = count.end()
        else:
            i += 1
    return None


def _escape(pattern: str, i: int, in_class: bool) -> str | None:
    c = pattern[i + 1]
    if c in _ESCAPES:
        return f"{_ESCAPES[c]}, {_LACKS} (write the character itself)"
    if not c.isascii():
        return f"the escaped character \\{c}, {_LACKS} (RE2 escapes only ASCII punctuation: write the character itself)"
    if c == "Z" and not in_class:
        return f"\\Z, {_LACKS} (RE2 writes the end of the text \\z)"
    if in_class and c == "b":
        return f"\\b in a character class (a backspace in Python), {_LACKS}"
    if in_class and c in "1234567" and pattern[i + 2:i + 3] not in tuple("01234567"):
        return f"the one-digit octal escape \\{c} in a character class, {_LACKS} (write \\x0{c})"
    return None


def _class(pattern: str, i: int) -> tuple[str | None, int]:
    """Scan the character class opening at ``i``: what RE2 refuses in it, and where it ends."""
    i += 1
    if pattern.startswith("^", i):
        i += 1
    first = True
    while i < len(pattern) and (pattern[i] != "]" or first):
        first = False
        if pattern.startswith("[:", i) and (end := pattern.find(":]", i + 2)) >= 0:
            # RE2 reads [:name:] inside a class as a POSIX class (Python as the characters), and refuses an unknown name
            name = pattern[i + 2:end]
            if name.removeprefix("^") not in _POSIX:
                return f"the POSIX class [:{name}:], {_LACKS} (its classes: {', '.join(sorted(_POSIX))})", i
            i = end + 2
            continue
        if pattern[i] == "\\":
            if found := _escape(pattern, i, in_class=True):
                return found, i
            i += 2
        else:
            i += 1
    return None, i + 1


def _group(pattern: str, i: int) -> str | None:
    """What RE2 refuses at ``(?`` (lookaround, backreferences and the rest come from the parse tree)."""
    rest = pattern[i + 2:]
    if rest.startswith("#"):
        return f"a (?#...) comment, {_LACKS}"
    if rest.startswith("P<"):
        name = rest[2:rest.find(">")]
        if not name.isascii():
            return f"the group name {name!r}, which RE2 does not take (its names are ASCII letters, digits and _)"
        return None
    flags = re.match(r"[a-zA-Z-]*(?=[:)])", rest)
    for flag in flags.group() if flags else "":
        if flag in _FLAGS:
            return f"the inline flag {flag} ({_FLAGS[flag]}), {_LACKS} (RE2's inline flags are i, m, s and U)"
    return None
