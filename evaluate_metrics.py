"""Score saved generations with BLEU, ROUGE-L F1 and BERTScore F1, with 95% bootstrap intervals.

  python evaluate_metrics.py runs/my-run/generations.jsonl --output_dir runs/my-run/metrics
  python evaluate_metrics.py sweep.jsonl --output_dir sweep-metrics          # one row per decoding setting
  python evaluate_metrics.py base.jsonl tuned.jsonl --output_dir compare     # paired comparison (tuned - base)
  python evaluate_metrics.py gens.jsonl --output_dir m --bertscore_model minilm   # fully offline backbone
  python evaluate_metrics.py base.jsonl tuned.jsonl --output_dir m --pairwise_ratings human.jsonl  # blind choices
  python evaluate_metrics.py base.jsonl tuned.jsonl --output_dir m --pairwise_ratings human.jsonl judge.jsonl  # + a judge

Writes metrics.json, metrics.csv, metrics.md, scores.jsonl and metrics.png to --output_dir; see docs/evaluate.md.
"""

from alpaca_qlora.cli import run_cli
from alpaca_qlora.scoring.job import main, run  # noqa: F401 - run: scoring in-process (tests, notebooks)

if __name__ == "__main__":
    run_cli(main)
