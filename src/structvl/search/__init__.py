"""Search a video collection with a trained model: embed it, index it with faiss, query it by text.

The shape of clip-retrieval (embed -> autofaiss-style index -> a small web page), for video and for any
structvl checkpoint. Modules, in the order a collection goes through them:

    store.py    the embedding directory: manifest, entry list, float16 chunks written atomically
    extract.py  `structvl extract`: a collection -> entries (clips, or segments of long videos) -> chunks,
                resumable, with the evaluation loader and multi-view pooling of the downstream protocols
    index.py    `structvl index`: a faiss index chosen by the collection's size, its search parameter tuned
                and its recall@10 against exact search measured on held-out queries, all written beside it
    query.py    `structvl search`: text -> the run's text tower -> top-k entries
    server.py   `structvl serve`: a local web page over query.py (static files in static/)

This layer uses models, data and tasks (checkpoint loading, the eval loader, the embedding functions) and is
used only by cli.py.
"""
