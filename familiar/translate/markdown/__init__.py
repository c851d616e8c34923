"""Split a Markdown article into prose to translate and structure to keep byte for byte (pure).

Flow: ``parse`` -> ``chunk`` (a ``Chunking``: the chunks and their layout) -> translate each
``Chunk.text`` -> ``validate`` / ``chunk_problems`` (on failure: ``split_chunk``, translate
the parts, ``join_parts``) -> ``assemble(chunking, translations)``.  Nothing is remembered
between calls: ``assemble`` puts translations back into the ``Chunking`` it is given.

Modules: ``model`` (the data), ``standard`` (what CommonMark says: markdown-it-py),
``blocks`` (``parse``: block structure, line prefixes), ``inline`` (protected spans inside a
paragraph), ``frontmatter`` (translatable values, quoting), ``cut`` (``chunk``,
``split_chunk``, ``join_parts``), ``checks`` (chat wrappers, target language), ``restore``
(``assemble`` and every check on a translation).

Blocks.  ``parse`` finds the blocks the way CommonMark does and cuts the body into ``keep``
segments (fenced / indented code, HTML blocks, reference definitions, rules, ``$$`` math,
blank lines) and ``text`` segments (paragraphs, headings, table rows).  A prose line's
prefix (indentation, ``>``, list markers, task boxes, ``#``) never enters a chunk: familiar
puts it back, line by line.  Inline code, raw HTML, autolinks, URLs, link / image targets,
footnote markers, entities and table pipes are protected, as is any such span that goes on
to the next line of its paragraph.  Only the chosen one-line front matter values are
translatable.

Checks.  A translation is refused when it loses a placeholder, changes visible markup, has
a chat preamble or closing remark or fence around it, is mostly not in the target language,
or, put back among the top-level blocks around its chunk, changes their block structure
or a protected span (as a CommonMark parser reads them).

Placeholders.  In a ``Chunk.text`` each protected span, and each keep block lying between
two paragraphs of the chunk, is a placeholder ``⟦P0⟧``, ``⟦P1⟧``..., numbered per chunk;
``Chunk.placeholders`` maps it to its exact bytes.  When the source already holds ``⟦`` or
``⟧``, another unused pair is chosen (``Chunk.delims``).  Line
breaks are ``\\n`` in the chunk text; the original ones (CRLF, trailing spaces / hard
breaks) and prefixes come back when a translation keeps the line count, else paragraph by
paragraph (an added line gets its paragraph's continuation prefix and ``Article.newline``).
Chunk texts never start or end with whitespace.

Split parts.  ``split_chunk`` halves a chunk; the halves keep the parent's ``index`` and
placeholder names (a subset each, not renumbered), get ``part = parent.part + (0,)`` /
``(1,)``, and the first half's ``joiner`` is the separator removed between them
(``join_parts`` adapts it to the target text: a space between English words, none between
Japanese sentences).  Parts can be
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
    assemble_pieces,
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
    "assemble_pieces",
    "chunk",
    "chunk_problems",
    "estimate_tokens",
    "join_parts",
    "markup_problems",
    "parse",
    "split_chunk",
    "validate",
]
