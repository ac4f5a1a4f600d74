"""Rules for the text people type: prompts, emails, passwords.

Every rule here answers with a message for a 422, never an exception a handler has not
planned for. Control characters (Unicode category ``Cc``, which includes NUL and the C1
range that a wrong decoding produces) are refused everywhere, except tab and newline in
a prompt.
"""

from __future__ import annotations

import unicodedata
from functools import cache

from zxcvbn.frequency_lists import FREQUENCY_LISTS

MIN_PASSWORD_CHARS = 8
# Letters that render as nothing although Unicode files them as letters or symbols
# (Hangul fillers, the blank Braille pattern): a prompt of only these is empty.
_BLANK_LETTERS = frozenset("\u115f\u1160\u3164\uffa0\u2800")
# Categories that draw nothing by themselves: separators, controls, format characters
# (zero-width space, joiners, BOM, bidi marks), combining marks, unassigned code points.
_INVISIBLE_CATEGORIES = frozenset({"Zs", "Zl", "Zp", "Cc", "Cf", "Cn", "Mn", "Me"})


class TextRefused(ValueError):
    """The text breaks a rule; ``str(err)`` says which, in words for the user."""


def _control_characters(text: str, allowed: str = "") -> bool:
    return any(unicodedata.category(ch) == "Cc" and ch not in allowed for ch in text)


def clean_prompt(prompt: str, *, max_chars: int) -> str:
    """The prompt as stored: Unicode NFC, line endings as ``\\n``, trimmed."""
    prompt = unicodedata.normalize("NFC", prompt.replace("\r\n", "\n").replace("\r", "\n"))
    if _control_characters(prompt, allowed="\t\n"):
        raise TextRefused("The prompt contains control characters.")
    prompt = prompt.strip()
    if not any(
        unicodedata.category(ch) not in _INVISIBLE_CATEGORIES and ch not in _BLANK_LETTERS
        for ch in prompt
    ):
        raise TextRefused("The prompt is empty.")
    if len(prompt) > max_chars:
        raise TextRefused(f"The prompt is longer than {max_chars} characters.")
    return prompt


def clean_label(label: str, *, max_chars: int) -> str:
    """A name a person gives a thing (a device token): NFC, trimmed, one line, visible."""
    label = unicodedata.normalize("NFC", label).strip()
    if _control_characters(label):
        raise TextRefused("The name contains control characters.")
    if not any(unicodedata.category(ch) not in _INVISIBLE_CATEGORIES for ch in label):
        raise TextRefused("The name is empty.")
    if len(label) > max_chars:
        raise TextRefused(f"The name is longer than {max_chars} characters.")
    return label


def normalize_email(email: str) -> str:
    """One spelling per address: NFKC folds look-alikes (fullwidth letters, ligatures)
    into their plain form, case folding makes ``Straße`` and ``STRASSE`` one account."""
    if _control_characters(email):
        raise TextRefused("The email contains control characters.")
    normalized = unicodedata.normalize("NFKC", email.strip()).casefold()
    local, at, domain = normalized.rpartition("@")
    if (
        not at
        or not local
        or "." not in domain.strip(".")
        or any(ch.isspace() for ch in normalized)
        or len(normalized) > 254
    ):
        raise TextRefused("This is not an email address.")
    return normalized


@cache
def _common_passwords() -> frozenset[str]:
    # zxcvbn ships the 30,000 most common passwords of public breach lists, most common first.
    return frozenset(p for p in FREQUENCY_LISTS["passwords"] if len(p) >= MIN_PASSWORD_CHARS)


def check_new_password(password: str, *, email: str) -> None:
    """A password for a new account: long enough, not blank, not a famous one."""
    if _control_characters(password):
        raise TextRefused("The password contains control characters.")
    if len(password) < MIN_PASSWORD_CHARS:
        raise TextRefused(f"The password needs at least {MIN_PASSWORD_CHARS} characters.")
    if not password.strip():
        raise TextRefused("The password can't be only spaces.")
    folded = password.casefold()
    if (
        folded in _common_passwords()
        or len(set(folded)) < 3  # "aaaaaaaa", "abababab"
        or folded in (email, email.partition("@")[0])
    ):
        raise TextRefused("This password is too easy to guess; choose another.")


def check_password_text(password: str) -> None:
    """Any password sent to log in: refused before any hashing work if it cannot be one."""
    if _control_characters(password):
        raise TextRefused("The password contains control characters.")
