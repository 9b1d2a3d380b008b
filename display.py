"""How file names are shown to people: a leaf module (standard library only), so every
layer can use it, and the CLI's fast, torch-free paths too.

A file name is data from the disk, not text we wrote: it may hold terminal escapes (which
recolour or clear a terminal, or move its cursor), newlines (which fake output lines) and
bytes that are not UTF-8. ``printable`` shows all of those as visible escapes.
"""

from __future__ import annotations


def printable(text: str) -> str:
    """``text`` with control characters (terminal escapes, newlines) and undecodable bytes
    written as visible escapes, so a file name cannot fake or recolour output lines.

    Example:
        >>> printable("a\\x1b[31m\\nb.jpg")
        'a\\\\x1b[31m\\\\nb.jpg'
        >>> printable("Ferien 2021 é.jpg")
        'Ferien 2021 é.jpg'
    """
    if text.isprintable():
        return text
    out = []
    for char in text:
        if char.isprintable():
            out.append(char)
        elif "\udc80" <= char <= "\udcff":  # an undecodable byte kept by surrogateescape
            out.append(f"\\x{ord(char) - 0xDC00:02x}")
        else:
            out.append(char.encode("unicode_escape").decode("ascii"))
    return "".join(out)


QUERY_CUT = "The query is longer than the model reads"


def warn_query_cut(limit: int) -> None:
    """Say (as a ``UserWarning``, which the CLI prints as one line) that a query was cut
    to the model's context of ``limit`` tokens: the words after it changed nothing."""
    import warnings

    warnings.warn(f"{QUERY_CUT} ({limit} tokens); the words after that were ignored.",
                  UserWarning, stacklevel=3)
