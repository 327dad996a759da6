"""The one rule for text the store keeps (prompts, app ids, expert names, keys, request ids).

Refused, not normalised: a lone UTF-16 surrogate (not encodable as UTF-8, so tokenizers and the
database choke on it) and the ASCII control characters (U+0000–U+001F and U+007F) other than tab,
newline and carriage return (PostgreSQL ``text`` cannot hold NUL; the others are almost always a
client's encoding bug). Normalising would silently change the text a caller's feedback and hashes
refer to, so the caller is told instead. Everything else is kept as sent: emoji, right-to-left
text, combining marks, zero-width and other format characters, private-use characters, and the C1
controls U+0080–U+009F, which real corpora carry (U+0085 NEL, cp1252 mojibake) and which both the
database and the tokenizers take.
"""

from __future__ import annotations

import re
from typing import Any

# C0 controls except \t \n \r, and DEL; then the surrogate block.
_CONTROLS = "\\u0000-\\u0008\\u000b\\u000c\\u000e-\\u001f\\u007f"
_BAD = re.compile(f"[{_CONTROLS}\\ud800-\\udfff]")
TEXT_PATTERN = f"^[^{_CONTROLS}]*$"
"""The control-character half of the rule as a JSON-Schema ``pattern``. Surrogates are left out: a
UTF-16 engine (ECMA-262 without the ``u`` flag) would read every emoji as two of them, and a
UTF-8 engine cannot name them; no valid Unicode string holds a lone one anyway."""


def text_problem(value: str) -> str | None:
    """Why ``value`` may not be stored (a phrase), or None when it is acceptable."""
    match = _BAD.search(value)
    if match is None:
        return None
    char, position = match.group(), match.start()
    code = f"U+{ord(char):04X}" + (" (NUL)" if char == "\x00" else "")
    if 0xD800 <= ord(char) <= 0xDFFF:
        return f"holds a lone surrogate {code} at character {position}, which is not valid Unicode text"
    return (f"holds the control character {code} at character {position}; "
            "only tab, newline and carriage return are allowed")


def check_text(value: Any) -> Any:
    """``value`` unchanged, or ValueError with the problem; non-strings pass to the type's own check.

    For a pydantic ``BeforeValidator``: it must run before pydantic's string checks, which refuse a
    lone surrogate with a less helpful message only when the field has a length constraint.
    """
    if isinstance(value, str):
        problem = text_problem(value)
        if problem is not None:
            raise ValueError(problem)
    return value


def printable(value: object) -> str:
    """``str(value)`` safe to encode as UTF-8 (a lone surrogate becomes a backslash escape such as ``\\udc80``)."""
    return str(value).encode("utf-8", "backslashreplace").decode("utf-8")
