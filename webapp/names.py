"""One rule for the names people give things: datasets, models, devices, artifacts, organisations.

A name may hold any letters, digits, punctuation, spaces and symbols, but no invisible control
or formatting character: Unicode categories Cc (controls), Cf (format: the bidi overrides and
isolates such as U+202E, zero-width spaces and joiners, the byte-order mark, soft hyphens, tag
characters), Cs (lone surrogates) and the line and paragraph separators (Zl, Zp). A bidi
override makes ``dog\u202egnp.exe`` show as "dogexe.png"; every page and API client would then
display a name that is not what it says. Such names are refused with a sentence naming the
character, never silently rewritten.

Forms and serializers use :func:`validate_name` (a Django validator) on their name fields, and
the services that store names call :func:`name_problem` so every entry point gets the same rule.
"""

from __future__ import annotations

import unicodedata

from django.core.exceptions import ValidationError

REFUSED_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Zl", "Zp"})


def name_problem(value: str) -> str | None:
    """Why ``value`` cannot be a name, as a sentence; ``None`` when it can."""
    for ch in str(value):
        if unicodedata.category(ch) in REFUSED_CATEGORIES:
            what = unicodedata.name(ch, "a control character")
            return (
                f"Names cannot contain invisible control or formatting characters; this one "
                f"contains U+{ord(ch):04X} ({what}), which can make a name display as "
                "something it is not."
            )
    return None


def validate_name(value: str) -> None:
    """A Django validator for name fields (forms, serializers)."""
    problem = name_problem(value)
    if problem is not None:
        raise ValidationError(problem, code="format_character")
