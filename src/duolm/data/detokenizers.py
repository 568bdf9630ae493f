"""Undo the preprocessing of the papers' corpora before tokenizing (as the papers do).

Several corpora were tokenized by their authors (spaces around punctuation, `@-@` for hyphens,
`N` for numbers, ...). A GPT-2 model trained on raw web text would be charged for that odd
spacing, so the text is put back into ordinary form first. Used for training sets (LM1B,
WikiText-103: duolm.data.corpora) and the zero-shot sets (duolm.data.zero_shot).
"""
from __future__ import annotations

import re


def _contractions(x: str) -> str:
    x = re.sub(r" n't\b", "n't", x)
    x = re.sub(r" '(s|re|ve|ll|d|m)\b", r"'\1", x)
    return re.sub(r"s ' ", "s' ", x)


def _punctuation(x: str) -> str:
    x = re.sub(r" ([.,;:!?%])", r"\1", x)          # no space before closing punctuation
    x = re.sub(r"([(\[{$#]) ", r"\1", x)            # none after opening brackets and currency
    x = re.sub(r" ([)\]}])", r"\1", x)
    return x


def ptb_detokenize(x: str) -> str:
    """Penn Treebank (Mikolov's version): lower-cased, `N` for numbers, `<unk>`, split clitics."""
    x = x.replace("\\/", "/").replace(" \n ", "\n")
    x = re.sub(r"(?<=\s)N(?=\s|$)", "1", " " + x)[1:]   # a number token, wherever it stands
    x = _punctuation(_contractions(x))
    return x.replace("<unk>", "?")  # after the punctuation rules, so it is not glued to the word before


def wikitext_detokenize(x: str) -> str:
    """WikiText: `@-@`, `@,@`, `@.@` inside numbers and words, spaced punctuation, `= = Title = =`."""
    x = x.replace(" @-@ ", "-").replace(" @,@ ", ",").replace(" @.@ ", ".")
    x = re.sub(r"= = = = ", "==== ", x)
    x = re.sub(r" = = = =", " ====", x)
    x = re.sub(r"= = = ", "=== ", x)
    x = re.sub(r" = = =", " ===", x)
    x = re.sub(r"= = ", "== ", x)
    x = re.sub(r" = =", " ==", x)
    x = re.sub(r'" ([^"]*?) "', r'"\1"', x)            # "quoted text" without inner spaces
    x = _contractions(x)
    x = x.replace(" \n", "\n").replace("\n ", "\n")
    return _punctuation(x[1:] if x.startswith(" ") else x)  # every WikiText line opens with a space


def lm1b_detokenize(x: str) -> str:
    """One Billion Words: tokenized news sentences (split clitics, spaced punctuation, spaced URLs)."""
    x = re.sub(r"(https?) : / / ", r"\1://", x)
    x = re.sub(r'" ([^"]*?) "', r'"\1"', x)
    x = re.sub(r" - ", "-", x)
    return _punctuation(_contractions(x))


def lambada_detokenize(x: str) -> str:
    """LAMBADA (OpenAI's version): curly quotes to straight ones; a passage starts on a new line."""
    return "\n" + x.replace("\u201c", '"').replace("\u201d", '"').strip()


def scientific_papers_detokenize(x: str) -> str:
    """PubMed / arXiv articles: tokenized like WikiText and LM1B at once."""
    return lm1b_detokenize(wikitext_detokenize(x))


def identity(x: str) -> str:
    return x


def join_wikitext_articles(lines):
    """WikiText stores one line per row; an article starts at a ' = Title = ' line. Yields articles
    (a generator over any iterable of lines, so a split is never held whole)."""
    cur = []
    for line in lines:
        if line.startswith(" = ") and not line.startswith(" = = ") and cur:
            doc = "".join(cur)
            if doc.strip():
                yield doc
            cur = []
        cur.append(line)
    if cur and "".join(cur).strip():
        yield "".join(cur)
