"""Benchmark of evaluate_metrics.py's scoring: N pairs, BLEU + ROUGE-L + BERTScore (MiniLM) + bootstrap + report.

  python bench/bench_metrics.py                      # 1,000 Alpaca-length pairs
  python bench/bench_metrics.py --first_sentence     # 1,000 one-sentence pairs
  python bench/bench_metrics.py --data path/to/alpaca_data.json --pairs 1000 --bootstrap 1000

References are Alpaca outputs; each prediction is its reference with ~30% of the words dropped and a few
neighbours swapped (seeded), so it has a realistic length and overlap. The clock starts before the heavy imports,
so the total includes importing torch/transformers/bert-score and loading the scorer. Prints one JSON object.
"""

from __future__ import annotations

import time

START = time.perf_counter()

import argparse  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import random  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
from importlib.metadata import version  # noqa: E402
from pathlib import Path  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
DATA_CANDIDATES = [ROOT / "alpaca_data.json", ROOT / "shared" / "data" / "alpaca_data.json",
                   ROOT.parent / "shared" / "data" / "alpaca_data.json"]


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", help="Alpaca JSON (default: alpaca_data.json in the repo or shared/data)")
    parser.add_argument("--pairs", type=int, default=1000)
    parser.add_argument("--bootstrap", type=int, default=1000)
    parser.add_argument("--first_sentence", action="store_true", help="Keep only each output's first sentence.")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's choice, one per core)")
    return parser.parse_args()


def find_data(path: str | None) -> Path:
    candidates = [Path(path)] if path else DATA_CANDIDATES
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    sys.exit(f"error: no Alpaca data found (tried {', '.join(map(str, candidates))}); pass --data")


def make_pairs(data: Path, count: int, first_sentence: bool, seed: int) -> list[tuple[str, str]]:
    rng = random.Random(seed)
    outputs = [row["output"].strip() for row in json.loads(data.read_text(encoding="utf-8")) if row["output"].strip()]
    if first_sentence:
        outputs = [text.split(". ")[0].split("\n")[0] for text in outputs]
    references = rng.sample(outputs, count)
    return [(perturb(reference, rng), reference) for reference in references]


def perturb(text: str, rng: random.Random) -> str:
    words = [word for word in text.split() if rng.random() > 0.3] or text.split()[:1]
    for i in range(len(words) - 1):
        if rng.random() < 0.1:
            words[i], words[i + 1] = words[i + 1], words[i]
    return " ".join(words)


def main() -> None:
    args = parse_args()
    pairs = make_pairs(find_data(args.data), args.pairs, args.first_sentence, args.seed)
    tmp = Path(tempfile.mkdtemp(prefix="bench_metrics_"))
    gens = tmp / "generations.jsonl"
    gens.write_text("".join(json.dumps({"id": i, "prediction": p, "reference": r}) + "\n"
                            for i, (p, r) in enumerate(pairs)), encoding="utf-8")
    timings = {}

    def lap(name: str, since: float) -> float:
        now = time.perf_counter()
        timings[name] = round(now - since, 3)
        return now

    clock = time.perf_counter()
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    from alpaca_qlora.scoring import metrics
    from alpaca_qlora.scoring.report import OutputConfig, build_report, write_report
    from alpaca_qlora.scoring.inputs import InputConfig, load_groups

    config = metrics.MetricConfig(bertscore_model="minilm", bootstrap=args.bootstrap, no_progress=True)
    scorers = metrics.load_scorers(config)
    clock = lap("import_and_load_scorers", START)
    group = load_groups(str(gens), InputConfig())[0]
    predictions, references = [r.prediction for r in group.records], [r.reference for r in group.records]
    clock = lap("read_input", clock)
    stats = metrics.bleu_statistics(scorers, predictions, references)
    sentence = metrics.sentence_bleu(scorers, stats)
    clock = lap("bleu", clock)
    rouge = metrics.rouge_l_f1(scorers, predictions, references, progress=False)
    clock = lap("rouge_l", clock)
    bert = metrics.bertscore_f1(scorers, predictions, references)
    clock = lap("bertscore", clock)
    result = metrics.summarise(group, metrics.SampleScores(sentence, rouge, bert, stats), scorers)
    clock = lap("bootstrap", clock)
    write_report(build_report([str(gens)], scorers, [result], []), OutputConfig(output_dir=str(tmp / "metrics")))
    lap("write_report", clock)
    timings["total_including_load"] = round(time.perf_counter() - START, 3)
    tokenizer = scorers.bertscore._tokenizer  # only to report how much text the backbone read
    unique = set(predictions) | set(references)
    backbone_tokens = sum(min(len(ids), 512) for ids in tokenizer(sorted(unique))["input_ids"])

    print(json.dumps({
        "pairs": len(pairs),
        "texts": "first sentence of Alpaca outputs" if args.first_sentence else "Alpaca outputs",
        "mean_words_reference": round(sum(len(r.split()) for _, r in pairs) / len(pairs), 1),
        "mean_words_prediction": round(sum(len(p.split()) for p, _ in pairs) / len(pairs), 1),
        "bootstrap": args.bootstrap,
        "backbone": scorers.backbone.name,
        "backbone_tokens": backbone_tokens,
        "bertscore_tokens_per_second": round(backbone_tokens / timings["bertscore"]),
        "seconds": timings,
        "scores": {"bleu": round(result.bleu.value, 2), "rougeL_f1": round(result.rouge_l_f1.value, 4),
                   "bertscore_f1": round(result.bertscore_f1.value, 4)},
        "machine": {"cpu": platform.processor() or platform.machine(), "cores": torch.get_num_threads(),
                    "device": scorers.settings()["bertscore"]["device"], "python": platform.python_version()},
        "versions": {name: version(name) for name in ("torch", "transformers", "sacrebleu", "rouge-score",
                                                      "bert-score")},
    }, indent=2))


if __name__ == "__main__":
    main()
