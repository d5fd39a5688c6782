"""User data rendered as text, never as markup.

Class names, folder and dataset names come from the user's data: a `<script>` or `<img onerror=...>` in one must
reach the card as text, a `|` or a newline must not break its tables, and a `$` must not start matplotlib's
mathtext in the chart.
"""

import html
import re

# Line breaks and other control characters (a cell, a label or a heading is one line of text).
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]+")
# Characters that start inline markup in Markdown (GFM tables and strikethrough, the Hub's $ math), escaped with a
# backslash as CommonMark allows for any ASCII punctuation; an underscore only where it can delimit emphasis (not
# between two letters or digits: digit_3 stays as it is). &, < and > become HTML entities, which every renderer
# shows as the characters.
_MARKDOWN_SPECIAL = re.compile(r"[\\`*\[\]|~$]|(?<![^\W_])_|_(?![^\W_])")


def one_line(text: object) -> str:
    """`text` as a string on one line: line breaks and control characters become single spaces."""
    return _CONTROL.sub(" ", str(text)).strip()


def markdown_text(text: object) -> str:
    """`text` for Markdown body text or a table cell: shown literally, on one line, with no HTML or emphasis."""
    return html.escape(_MARKDOWN_SPECIAL.sub(lambda match: "\\" + match[0], one_line(text)), quote=False)


def code_span_text(text: object) -> str:
    """`text` for the inside of a single-backtick code span (where Markdown and HTML are already literal): on one
    line, its backticks replaced by apostrophes, which would otherwise close the span."""
    return one_line(text).replace("`", "'")


def chart_label(text: object) -> str:
    """`text` for a matplotlib label drawn with `parse_math=False` (no mathtext): on one line."""
    return one_line(text)
