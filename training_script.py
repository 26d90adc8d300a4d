#!/usr/bin/env python
"""Fine-tune a Hugging Face causal LM on Alpaca-format data with QLoRA.

    python training_script.py --base_model <hub id or local dir> --output_dir runs/my-run
    python training_script.py --help        # every option, TrainingArguments' included
"""

from alpaca_qlora.cli import run_cli
from alpaca_qlora.training.train import main

if __name__ == "__main__":
    run_cli(main)
