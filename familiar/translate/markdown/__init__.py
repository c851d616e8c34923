"""Split a Markdown article into prose to translate and structure to keep byte for byte (pure).

Flow: ``parse`` -> ``chunk`` (a ``Chunking``: the chunks and their layout) -> translate each
``Chunk.text`` -> ``validate`` / ``chunk_problems`` (on failure: ``split_chunk``, translate
the parts, ``join_parts``) -> ``assemble(chunking, translations)``.  Nothing is remembered
between calls: ``assemble`` puts translations back into the ``Chunking`` it is given.

Modules: ``model`` (the data), ``blocks`` (``parse``: block structure, line prefixes),
``inline`` (protected spans inside a line), ``frontmatter`` (translatable values, quoting),
``cut`` (``chunk``, ``split_chunk``, ``join_parts``), ``restore`` (``assemble`` and every
check on a translation).

Blocks.  ``parse`` cuts the body into ``keep`` segments (fenced / indented code, HTML
blocks, ``$$`` math, reference definitions, rules, blank lines) and ``text`` segments.  In
text, every line's structural prefix (indentation, ``>``, list markers, ``#``) and the inline
code, URLs, link / image targets, inline HTML, footnote markers, entities and table pipes are
protected.  Only the chosen one-line front matter values are translatable.

Placeholders.  In a ``Chunk.text`` each protected span, and each keep block lying between
two paragraphs of the chunk, is a placeholder ``⟦P0⟧``, ``⟦P1⟧``..., numbered per chunk;
``Chunk.placeholders`` maps it to its exact bytes.  When the source already holds ``⟦`` or
``⟧``, another unused pair is chosen (``Chunk.delims``).  Line
breaks are ``\\n`` in the chunk text; the original ones (CRLF, trailing spaces / hard
breaks) come back when a translation keeps the line count, else ``Article.newline`` is used.
Chunk texts never start or end with whitespace.

Split parts.  ``split_chunk`` halves a chunk; the halves keep the parent's ``index`` and
placeholder names (a subset each, not renumbered), get ``part = parent.part + (0,)`` /
``(1,)``, and the first half's ``joiner`` is the separator removed between them.  Parts can be
split again.  ``join_parts(parts, outputs)`` turns their translations into the parent's
translation, which goes into ``assemble``'s mapping under the parent index.
"""

from familiar.translate.markdown.blocks import parse
from familiar.translate.markdown.cut import chunk, join_parts, split_chunk
from familiar.translate.markdown.model import (
    Article,
    Chunk,
    Chunking,
    FrontMatter,
    Segment,
    estimate_tokens,
)
from familiar.translate.markdown.restore import (
    assemble,
    chunk_problems,
    markup_problems,
    validate,
)

__all__ = [
    "Article",
    "Chunk",
    "Chunking",
    "FrontMatter",
    "Segment",
    "assemble",
    "chunk",
    "chunk_problems",
    "estimate_tokens",
    "join_parts",
    "markup_problems",
    "parse",
    "split_chunk",
    "validate",
]
