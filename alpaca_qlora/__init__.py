"""QLoRA instruction fine-tuning on Alpaca-format data: training, generation, scoring."""

__version__ = "0.1.0"
