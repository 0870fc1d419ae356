"""Escaping text that comes from the user (layer and class names, file paths, exception messages)
for each output, so that it is shown as text and never acts: no terminal escape sequences, no
GitHub Actions workflow commands, no markdown or HTML in a step summary, no malformed XML.

Rich markup is not escaped here: gradscope prints user text as ``rich.text.Text`` (never parsed as
markup) or through ``rich.markup.escape``. HTML pages use :func:`html_text`.
"""

from __future__ import annotations

import html
import re
import sys

_BIDI = "\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069"
_CONTROLS = re.compile(f"[\x00-\x1f\x7f-\x9f{_BIDI}]")
_BIDI_CHARACTERS = re.compile(f"[{_BIDI}]")
# what can start markup inline: emphasis (``_`` only at a word's edge), code, links and images
# (``[``), table cells, strikethrough, ``#`` (a heading when it starts a line) and ``$`` (GitHub's math)
_MARKDOWN_PUNCTUATION = re.compile(r"([\\`*\[\]|~#$]|(?<![A-Za-z0-9])_|_(?![A-Za-z0-9]))")
_MARKDOWN_LIST_START = re.compile(r"^(\s*)(-|\d+\.)")
_WORKFLOW_COMMAND = re.compile(r"^(\s*)::", re.MULTILINE)


def show_controls(text: str) -> str:
    r"""Control characters (newlines too) and bidi overrides written out as escapes: user text
    for the terminal (where lines starting ``::`` are guarded by :class:`WorkflowCommandGuard`) and
    for XML (JUnit), which cannot hold control characters; ElementTree escapes ``<``, ``&``, quotes.

    >>> show_controls("\x1b[31mred\n")
    '\\x1b[31mred\\n'
    """
    return _CONTROLS.sub(lambda m: repr(m.group())[1:-1], text)


def html_text(text: str) -> str:
    r"""Text for an HTML page: ``html.escape``d, with bidi overrides written out as escapes (a
    right-to-left override in a layer name would reverse the rest of the line).

    >>> html_text("<b>\u202eLTR")
    '&lt;b&gt;\\u202eLTR'
    """
    return html.escape(_BIDI_CHARACTERS.sub(lambda m: repr(m.group())[1:-1], text))


def markdown_text(text: str) -> str:
    r"""Text for markdown (GitHub step summaries, ``--markdown``): control characters as escapes,
    the punctuation that starts markdown backslash-escaped, ``<``, ``>`` and ``&`` as HTML
    entities, and a line that would start a list escaped.

    >>> markdown_text("<script>x</script> # ![img](http://x) build_model() _em_")
    '&lt;script&gt;x&lt;/script&gt; \\# !\\[img\\](http://x) build_model() \\_em\\_'
    """
    text = show_controls(text).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    text = _MARKDOWN_PUNCTUATION.sub(lambda m: "\\" + m.group(), text)
    return _MARKDOWN_LIST_START.sub(lambda m: m.group(1) + m.group(2)[:-1] + "\\" + m.group(2)[-1], text)


def markdown_fence(code: str) -> str:
    """A code fence longer than any run of backticks in ``code``, so the code cannot close it."""
    longest = max((len(run) for run in re.findall("`+", code)), default=0)
    return "`" * max(3, longest + 1)


class WorkflowCommandGuard:
    """A stream in front of ``sys.stdout`` or ``sys.stderr`` (looked up at each write, so test
    runners that swap them keep working) that puts a backslash before ``::`` at the start of a
    line: under GitHub Actions such a line would run as a workflow command (``::error``,
    ``::add-mask``). gradscope prints its own annotations with ``print``, past this guard."""

    def __init__(self, stream: str = "stdout") -> None:
        self._stream = stream
        self._line_start = True

    def write(self, text: str) -> int:
        if text:
            guarded = _WORKFLOW_COMMAND.sub(r"\1\\::", text)
            if not self._line_start:  # the first line continues one already written
                first, newline, rest = text.partition("\n")
                guarded = first + newline + (_WORKFLOW_COMMAND.sub(r"\1\\::", rest) if newline else "")
            self._line_start = text.endswith("\n")
            getattr(sys, self._stream).write(guarded)
        return len(text)

    def __getattr__(self, name: str):
        return getattr(getattr(sys, self._stream), name)
