"""User and pipeline data shown as text, never as Markdown or HTML.

Streamlit renders GitHub-flavoured Markdown (and its own directives such as ``:red[...]``) in
titles, captions, alerts, metric labels and values, widget labels, image captions and ``st.table``
cells. A case key, label, comment, username or URL parameter put there unchanged could show a
link, fetch an image or hide text. Every page passes such values through :func:`plain` before they
reach one of those elements (``st.text``, ``st.code`` and ``st.dataframe`` cells are plain text
and need nothing).
"""

from __future__ import annotations

import string

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
    return "" if value is None else str(value).translate(_TABLE)
