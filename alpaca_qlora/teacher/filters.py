"""Filters of the QA pairs, each counted: what was dropped, by which filter, and why (kept in dropped.jsonl).

In order (a pair is counted by the first filter that drops it):
  empty        the answer is empty once cleaned
  truncated    the teacher used its whole --max_new_tokens budget: the answer was cut, not finished
  refusal      the answer refuses ("I'm sorry", "I cannot help", "As an AI ...")
  copy         the answer copies the source: its longest run of words found verbatim in the source covers at
               least --copy_threshold of its words (answers of fewer than --copy_min_words words are not judged)
  length       question or answer outside the word limits (--min/--max_question_words, --min/--max_answer_words)
  duplicate    the question is a near-duplicate (ROUGE-L F1 >= --rouge_threshold) of a question already kept, as
               self-instruct filters its instructions (rouge-score, no stemming); compared within the same source by
               default (--dedup_scope source: the same question about two posts is two different pairs), or
               against every kept question (--dedup_scope all)
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from difflib import SequenceMatcher

FILTERS = ("empty", "truncated", "refusal", "copy", "length", "duplicate")
REFUSAL = re.compile(
    r"\b(?:i\s*(?:'m| am)\s*(?:sorry|unable|not able)|i\s*apologi[sz]e|i\s*(?:can(?:'|no)t|cannot|won't|will not)\s*"
    r"(?:help|assist|answer|provide|comply|do that|fulfil)|as an ai\b|as a (?:large )?language model)",
    re.IGNORECASE)
WORD = re.compile(r"\w+", re.UNICODE)


@dataclass(frozen=True)
class FilterSettings:
    rouge_threshold: float = 0.7
    dedup_scope: str = "source"
    copy_threshold: float = 0.8
    copy_min_words: int = 8
    min_question_words: int = 3
    max_question_words: int = 60
    min_answer_words: int = 1
    max_answer_words: int = 200
    keep_truncated: bool = False


def words(text: str) -> list[str]:
    return WORD.findall(text.lower())


def is_refusal(answer: str) -> bool:
    return bool(REFUSAL.search(answer))


def copied_share(answer: str, source: str) -> float:
    """The share of the answer's words in its longest run found word for word in the source."""
    answer_words, source_words = words(answer), words(source)
    if not answer_words or not source_words:
        return 0.0
    match = SequenceMatcher(None, answer_words, source_words, autojunk=False).find_longest_match(
        0, len(answer_words), 0, len(source_words))
    return match.size / len(answer_words)


def length_problem(question: str, answer: str, settings: FilterSettings) -> str | None:
    q, a = len(question.split()), len(answer.split())
    if q < settings.min_question_words:
        return f"question of {q} words (< {settings.min_question_words})"
    if q > settings.max_question_words:
        return f"question of {q} words (> {settings.max_question_words})"
    if a < settings.min_answer_words:
        return f"answer of {a} words (< {settings.min_answer_words})"
    if a > settings.max_answer_words:
        return f"answer of {a} words (> {settings.max_answer_words})"
    return None


class DuplicateFilter:
    """ROUGE-L F1 of a question against the questions kept so far (per source, or all)."""

    def __init__(self, threshold: float, scope: str):
        from rouge_score import rouge_scorer

        self.scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)
        self.threshold, self.scope = threshold, scope
        self.kept: dict[str, list[str]] = {}

    def check(self, question: str, source_id: str) -> str | None:
        """Why the question is a near-duplicate, or None (then it is kept and later ones are compared with it)."""
        pool = self.kept.setdefault(source_id if self.scope == "source" else "", [])
        for earlier in pool:
            score = self.scorer.score(earlier, question)["rougeL"].fmeasure
            if score >= self.threshold:
                return f"ROUGE-L {score:.2f} with the kept question {earlier!r}"
        pool.append(question)
        return None


def first_failure(pair: dict, source_text: str, max_new_tokens: int, settings: FilterSettings) -> tuple[str, str] | None:
    """(filter, why) of the first filter before the duplicate check that drops the pair, or None."""
    answer, question = pair["output"], pair["instruction"]
    if not answer.strip():
        return "empty", "empty answer"
    if pair["new_tokens"] >= max_new_tokens and not settings.keep_truncated:
        return "truncated", f"the teacher wrote all {max_new_tokens} new tokens without ending its answer"
    if is_refusal(answer):
        return "refusal", "the answer refuses"
    if len(words(answer)) >= settings.copy_min_words and source_text:
        share = copied_share(answer, source_text)
        if share >= settings.copy_threshold:
            return "copy", f"{share:.0%} of the answer's words are one run copied from the source"
    problem = length_problem(question, answer, settings)
    if problem:
        return "length", problem
    return None
