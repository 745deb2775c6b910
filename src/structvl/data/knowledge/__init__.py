"""Structural knowledge of captions: what is in the scene, what it looks like, what happens, how things relate.

One spaCy pass per caption gives everything CLOP, S-ViLM and Clover read from a caption:

- `record.py`: `CaptionKnowledge`, the extracted knowledge of one caption (labels, noun phrases, words, spans);
- `rules.py`: the extraction rules on spaCy's dependency parse (the rules themselves are in its docstring),
  with `repair.py` (fixes for the parser's commonest misreadings of short captions) and `grammar.py` (the word
  lists and token tests both share);
- `cache.py`: the on-disk cache (sqlite, keyed by caption) so a corpus is parsed once, and `knowledge_for`;
- `vocab.py`: `KnowledgeVocab`, the top-K labels of each type and the multi-hot targets CLOP predicts;
- `swaps.py`: CLOP's hard-negative captions, one knowledge element swapped for another of its type;
- `corpus.py`: `structvl knowledge`, an annotation file's captions parsed into the cache.
"""
