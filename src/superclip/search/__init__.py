"""Search a collection with a trained model: ``superclip index`` (a resumable embedding job writing parts, a faiss
index and a SQLite catalog) and ``superclip serve`` (a FastAPI app and its search page).

Nothing in the library imports this package; it uses the library as any user would.
"""
