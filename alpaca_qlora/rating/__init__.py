"""Human evaluation in the browser: blind side-by-side rating of generation files, and chat-and-rate with one model.

command.py (the door), pairs.py (generation files, the blind pairs, each annotator's order), store.py (the
ratings file), chat.py (one model answering on the page), pages.py (HTML), server.py (routes and serving).
"""
