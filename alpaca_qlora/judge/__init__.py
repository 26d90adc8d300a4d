"""A model as judge: which of two answers is better, asked in both orders, read from the label probabilities.

    python -m alpaca_qlora.judge base.jsonl tuned.jsonl --judge MODEL --ratings_file judge.jsonl
    python evaluate_metrics.py base.jsonl tuned.jsonl --pairwise_ratings judge.jsonl --output_dir m

template.py (the prompt file), verdict.py (log-probabilities of the labels), job.py (the command); the statistics
of what to trust (position consistency, length bias, agreement with people) are scoring/judged.py's. docs/judge.md.
"""
