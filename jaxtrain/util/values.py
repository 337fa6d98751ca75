"""Lists of values written as text: `--grid key=v1,v2` and `choice(v1,v2)` in a search space."""

from __future__ import annotations


def split_values(text: str) -> list[str]:
    """'0.1,[32,16],[16]' -> ['0.1', '[32,16]', '[16]']: commas inside brackets belong to a value."""
    values, depth, current = [], 0, ""
    for ch in text:
        depth += (ch in "[{") - (ch in "]}")
        if ch == "," and depth == 0:
            values.append(current)
            current = ""
        else:
            current += ch
    return [v.strip() for v in [*values, current] if v.strip()]
