#!/usr/bin/env python
"""Generate with a fine-tuned (or the untuned base) model: interactive, one answer, or a prompts file to JSONL.

    python inference.py --adapter runs/my-run                                      # interactive, for human evaluation
    python inference.py --adapter runs/my-run --instruction "Name three primary colors."
    python inference.py --adapter runs/llava-run --instruction "Does this post break a rule?" --image post.png
    python inference.py --adapter runs/my-run --prompts_file runs/my-run/val.jsonl --output_file runs/my-run/generations.jsonl
    python inference.py --adapter runs/my-run --prompts_file runs/my-run/val.jsonl --output_file sweep.jsonl \\
        --sweep "top_k=1,10,50 num_beams=1,4 temperature=0.2,0.7,1.0"
    python inference.py --help                                                     # every option
"""

from alpaca_qlora.cli import run_cli
from alpaca_qlora.generation.job import main

if __name__ == "__main__":
    run_cli(main)
