"""User and pipeline data shown as text, never as Markdown or HTML.

Streamlit renders GitHub-flavoured Markdown (and its own directives such as ``:red[...]``) in
titles, captions, alerts, metric labels and values, widget labels, image captions and ``st.table``
cells. A case key, label, comment, username or URL parameter put there unchanged could show a
link, fetch an image or hide text. Every page passes such values through :func:`plain` before they
reach one of those elements (``st.text``, ``st.code`` and ``st.dataframe`` cells are plain text
and need nothing).

Escaping alone does not stop GitHub's autolinks: Streamlit's renderer turns ``http://...``,
``www.`` and ``name@host.tld`` found in the parsed *text* into links (after escapes are resolved),
so :func:`plain` also puts an invisible WORD JOINER (U+2060) after ``http``/``https``/``ftp``/
``mailto``/``xmpp`` before their ``:``, after ``www`` before its ``.`` and after every ``@``.
The text reads the same; a copy of it carries the joiners.
"""

from __future__ import annotations

import re
import string

WORD_JOINER = "\u2060"
_AUTOLINK = re.compile(
    r"(?i)(?<![a-z0-9])(https?|ftp|mailto|xmpp)(?=:)|(?<![a-z0-9])(www)(?=\.)|(@)"
)

# '<', '>' and '&' become character references: they show as themselves in Markdown and also
# where the page allows HTML (the volume legend); every other ASCII punctuation character gets a
# backslash (CommonMark: a backslash before ASCII punctuation makes it a literal character), so
# no emphasis, link, image, heading, list, table, code span, directive or math can start.
_ENTITIES = {"<": "&lt;", ">": "&gt;", "&": "&amp;"}
_ESCAPED = {c: "\\" + c for c in string.punctuation if c not in _ENTITIES}
_TABLE = str.maketrans({**_ESCAPED, **_ENTITIES})


def plain(value: object) -> str:
    """``value`` as a string that Markdown shows literally (``None`` -> ``""``).

    >>> print(plain("**bold** <b>"))
    \\*\\*bold\\*\\* &lt;b&gt;
    """
    if value is None:
        return ""
    return break_autolinks(str(value)).translate(_TABLE)


def break_autolinks(text: str) -> str:
    """``text`` with a WORD JOINER where GitHub Markdown would start an automatic link."""
    return _AUTOLINK.sub(lambda m: m.group(0) + WORD_JOINER, text)
