"""The teacher job: a strong model writes question-answer pairs about source material (text and images), which
are parsed, filtered and split into Alpaca records that fine-tune a small student (`python -m alpaca_qlora.teacher`)."""
