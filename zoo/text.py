"""Text read from a file, made safe to print: every character that could drive a terminal or forge a line is
written as a visible escape. C0 controls and DEL (ECMA-48's control set: ESC starts the CSI and OSC sequences
that clear the screen, set the title or add hyperlinks; CR and LF forge lines), the C1 controls U+0080-U+009F
(CSI and OSC again, as one character), the Unicode line and paragraph separators, the bidirectional embeddings,
overrides and isolates (Unicode UAX #9: U+202A-U+202E, U+2066-U+2069, which reorder what follows them), and
lone surrogates (undecodable bytes in a file name, which no terminal encoding can write). No torch here."""

from __future__ import annotations

_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}
_CODES = [*range(0x20), 0x7F, *range(0x80, 0xA0), 0x2028, 0x2029, *range(0x202A, 0x202F), *range(0x2066, 0x206A)]
_ESCAPES = {
    **{c: (f"\\x{c:02x}" if c < 0x100 else f"\\u{c:04x}") for c in _CODES},
    **{ord(k): v for k, v in _NAMED.items()},
    **{c: f"\\u{c:04x}" for c in range(0xD800, 0xE000)},
}


def printable(value: object) -> str:
    """``str(value)`` with every control, separator, bidi and surrogate character written as its escape
    (``\\x1b``, ``\\n``, ``\\u202e``, ...); the result is one line that prints as it reads."""
    return str(value).translate(_ESCAPES)
