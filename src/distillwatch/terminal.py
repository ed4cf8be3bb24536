"""Text that reaches a terminal: attacker-chosen strings must not become terminal commands.

Account ids, prompts, user agents, file names and reasons quoting them are untrusted. Printed raw,
an ESC byte lets them recolour, move the cursor, retitle the window or (on some terminals) worse;
Unicode bidi controls make one id read as another. :func:`terminal_safe` spells such characters
out (``\\x1b``, ``\\u202e``); :class:`SafeConsole` applies it to every piece of text Rich renders,
so no command has to remember to.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from rich.console import Console
from rich.segment import Segment
from rich.text import Text

#: C0 controls except tab and newline, DEL, C1 controls, and the bidi formatting characters.
_UNSAFE = [*range(0x00, 0x09), *range(0x0B, 0x20), 0x7F, *range(0x80, 0xA0),
           0x200E, 0x200F, *range(0x202A, 0x202F), *range(0x2066, 0x206A)]  # fmt: skip
_TABLE = {c: (f"\\x{c:02x}" if c < 0x100 else f"\\u{c:04x}") for c in _UNSAFE}


def terminal_safe(text: str) -> str:
    """``text`` with control and bidi characters written out as escapes (tab, newline kept)."""
    return text.translate(_TABLE)


def safe_text(text: str, **kwargs: Any) -> Text:
    """A Rich :class:`Text` of untrusted ``text``: never read as markup, controls escaped.

    Escape before layout (as here), so a table sizes the cell for what is really shown.
    """
    return Text(terminal_safe(text), **kwargs)


class SafeConsole(Console):
    """A Rich console that never lets rendered text carry control characters.

    Strings given to ``print`` are escaped before markup and layout; anything else is caught as
    it is rendered (a last line of defence: layout may then be off, the terminal is safe).
    Styles and Rich's own control sequences (cursor moves of a live display) are segments of
    their own and pass unchanged.
    """

    def render_str(self, text: str, **kwargs: Any) -> Text:
        return super().render_str(terminal_safe(text), **kwargs)

    def render(self, renderable: Any, options: Any = None) -> Iterable[Segment]:
        for segment in super().render(renderable, options):
            text = segment.text
            if segment.control or text.isprintable() or not text:
                yield segment
            else:
                yield Segment(terminal_safe(text), segment.style, segment.control)
