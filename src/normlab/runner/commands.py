"""Commands normlab prints for the user to paste (`continue with: python train.py
resume=...`), quoted twice: for Hydra's override grammar (a path with a space, a comma, a
quote or a non-ASCII letter is one value only inside quotes) and for the shell. Pasted into
bash, every command gives back exactly the path it was made from (tests/test_commands.py).
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

# Values Hydra reads back unchanged without quotes, and the shell too.
_PLAIN = re.compile(r"[A-Za-z0-9_./@-][A-Za-z0-9_./@+-]*")
# What bash still reads inside double quotes, escaped there with a backslash.
_IN_DOUBLE_QUOTES = re.compile(r'([$`"\\])')


def hydra_value(value: str | Path) -> str:
    """`value` as Hydra's override grammar reads it back to the very same string: as it is
    when that is safe, else in single quotes, with `'` and the backslashes before a quote
    escaped, and `${` escaped so that OmegaConf takes it for text, not an interpolation."""
    text = str(value)
    if _PLAIN.fullmatch(text) and not _parses_as_other_type(text):
        return text
    # OmegaConf: `\${` is a literal `${`; backslashes right before it are doubled.
    text = re.sub(r"(\\*)\$\{", lambda m: m.group(1) * 2 + "\\${", text)
    # Hydra's quoted strings: backslashes are special only before a quote or at the end.
    text = re.sub(r"(\\*)('|$)", lambda m: m.group(1) * 2 + ("\\'" if m.group(2) else ""), text)
    return f"'{text}'"


def _parses_as_other_type(text: str) -> bool:
    """Whether Hydra would read `text` unquoted as a number, a boolean or null."""
    if text.lower() in ("true", "false", "null", "nan", "inf"):
        return True
    try:
        float(text.replace("_", ""))
    except ValueError:
        return False
    return True


def override(key: str, value: str | Path) -> str:
    """`key=value` as one word to paste into a shell: `run=/tmp/runs/x`, or quoted for Hydra
    and then for the shell, `"run='/tmp/lo gs ü/x'"`."""
    word = f"{key}={hydra_value(value)}"
    if shlex.quote(word) == word:
        return word
    if "!" in word or "\n" in word:  # history expansion works inside double quotes too
        return shlex.quote(word)
    return '"' + _IN_DOUBLE_QUOTES.sub(r"\\\1", word) + '"'  # easier to read than '"'"'


def command(program: str, *args: str, **overrides: str | Path) -> str:
    """`python <program> <args> key=value ...`, each override quoted by `override`;
    `args` are words already safe to paste (`-m`, `which=last`)."""
    words = ["python", program, *args, *(override(k, v) for k, v in overrides.items())]
    return " ".join(words)
