"""Scoring functions of the evaluations, each a pure function of strings.

The LongBench metrics reproduce LongBench's ``metrics.py`` (THUDM/LongBench) behaviour for behaviour, quirks
included, so a score computed here can be compared with a published LongBench number:

- ``qa_f1_score``: token F1 after SQuAD's ``normalize_answer``.
- ``rouge_score``: ROUGE-L F of the ``rouge`` package (pltrdy, 1.0.1) that LongBench calls: texts are cut into
  sentences at ``.``, ROUGE-L is *summary level* with ``exclusive=True`` (counts are over *sets* of words), and
  any failure (an empty hypothesis or reference) scores 0.
- ``classification_score``, ``retrieval_score``, ``count_score``, ``code_sim_score`` (fuzzywuzzy's ``ratio``,
  which with python-Levenshtein installed is ``round(100 * Levenshtein.ratio)``).

The repetition task (seed 003) scores with ``levenshtein_ratio`` (normalised Indel similarity,
``1 - indel_distance / (len1 + len2)``) and ``word_count_difference``.
"""

from __future__ import annotations

import re
import string
from collections import Counter
from collections.abc import Sequence

import Levenshtein

# -- repetition task (seed 003) --------------------------------------------------------------------------------------


def levenshtein_ratio(target: str, prediction: str) -> float:
    """``Levenshtein.ratio``: ``1 - indel_distance / (len(a) + len(b))``; 1.0 for two empty strings."""
    return float(Levenshtein.ratio(target, prediction))


def word_count_difference(target: str, prediction: str) -> int:
    """``|words(target) - words(prediction)|``, words split on whitespace as in seed 003."""
    return abs(len(target.split()) - len(prediction.split()))


# -- SQuAD-style answer F1 -------------------------------------------------------------------------------------------

_PUNCTUATION = frozenset(string.punctuation)


def normalize_answer(text: str) -> str:
    """SQuAD's normalisation: lower case, drop punctuation, drop the articles a/an/the, collapse whitespace."""
    text = "".join(ch for ch in text.lower() if ch not in _PUNCTUATION)
    text = re.sub(r"\b(a|an|the)\b", " ", text)
    return " ".join(text.split())


def token_f1(prediction_tokens: Sequence[str], reference_tokens: Sequence[str]) -> float:
    """F1 of the multiset overlap of two token lists (0 when nothing is shared)."""
    same = sum((Counter(prediction_tokens) & Counter(reference_tokens)).values())
    if same == 0:
        return 0.0
    precision = same / len(prediction_tokens)
    recall = same / len(reference_tokens)
    return 2 * precision * recall / (precision + recall)


def qa_f1_score(prediction: str, ground_truth: str, **_) -> float:
    return token_f1(normalize_answer(prediction).split(), normalize_answer(ground_truth).split())


# -- ROUGE-L as the `rouge` package computes it ----------------------------------------------------------------------


def _sentences(text: str) -> list[str]:
    # rouge 1.0.1: split at ".", keep the non-empty pieces, collapse their whitespace (a piece may become "").
    return [" ".join(piece.split()) for piece in text.split(".") if len(piece) > 0]


def _words(sentences: Sequence[str]) -> list[str]:
    return [word for sentence in sentences for word in sentence.split(" ")]


def _lcs_words(reference: list[str], hypothesis: list[str]) -> set[str]:
    """The words of one longest common subsequence, picked by the same backtrack as ``rouge``'s ``_recon_lcs``."""
    n, m = len(reference), len(hypothesis)
    table = [[0] * (m + 1) for _ in range(n + 1)]
    for i in range(1, n + 1):
        for j in range(1, m + 1):
            if reference[i - 1] == hypothesis[j - 1]:
                table[i][j] = table[i - 1][j - 1] + 1
            else:
                table[i][j] = max(table[i - 1][j], table[i][j - 1])
    words: set[str] = set()
    i, j = n, m
    while i > 0 and j > 0:  # ties go left (j - 1), as in rouge: only a strictly larger upper cell goes up
        if reference[i - 1] == hypothesis[j - 1]:
            words.add(reference[i - 1])
            i, j = i - 1, j - 1
        elif table[i - 1][j] > table[i][j - 1]:
            i -= 1
        else:
            j -= 1
    return words


def rouge_l_f(hypothesis: str, reference: str) -> float:
    """ROUGE-L F (summary level, exclusive) of the ``rouge`` package; raises ``ValueError`` on an empty side."""
    hyp, ref = _sentences(hypothesis), _sentences(reference)
    if not hyp or not ref:
        raise ValueError("rouge: expected a non-empty hypothesis and reference")
    m = len(set(_words(ref)))
    n = len(set(_words(hyp)))
    union: set[str] = set()
    overlap = 0
    for ref_sentence in ref:
        before = len(union)
        ref_words = ref_sentence.split(" ")
        for hyp_sentence in hyp:
            union |= _lcs_words(ref_words, hyp_sentence.split(" "))
        overlap += len(union) - before
    recall, precision = overlap / m, overlap / n
    return 2.0 * (precision * recall) / (precision + recall + 1e-8)


def rouge_score(prediction: str, ground_truth: str, **_) -> float:
    """LongBench's ``rouge_score``: ROUGE-L F, and 0.0 where the ``rouge`` package would raise."""
    try:
        return rouge_l_f(prediction, ground_truth)
    except ValueError:
        return 0.0


# -- LongBench's other metrics --------------------------------------------------------------------------------------


def _share_of_numbers(prediction: str, wanted: str) -> float:
    numbers = re.findall(r"\d+", prediction)
    if not numbers:
        return 0.0
    return sum(1 for number in numbers if number == str(wanted)) / len(numbers)


def count_score(prediction: str, ground_truth: str, **_) -> float:
    """Share of the numbers in ``prediction`` that equal the count."""
    return _share_of_numbers(prediction, str(ground_truth))


def retrieval_score(prediction: str, ground_truth: str, **_) -> float:
    """Share of the numbers in ``prediction`` that equal the paragraph number of ``Paragraph N``."""
    matches = re.findall(r"Paragraph (\d+)", ground_truth)
    if not matches:
        raise ValueError(f"retrieval: expected an answer like 'Paragraph 3', got {ground_truth!r}")
    return _share_of_numbers(prediction, matches[0])


def retrieval_zh_score(prediction: str, ground_truth: str, **_) -> float:
    matches = re.findall(r"段落(\d+)", ground_truth)
    if not matches:
        raise ValueError(f"retrieval: expected an answer like '段落3', got {ground_truth!r}")
    return _share_of_numbers(prediction, matches[0])


def classification_score(prediction: str, ground_truth: str, *, all_classes: Sequence[str] | None = None, **_) -> float:
    """1/k when the true class is among the k class names found in ``prediction``, else 0.

    As in LongBench: a class name that is a strict substring of the true class is dropped while the list is being
    walked (so the element after each drop is skipped), and the difflib fallback for "no class found" is never
    reached (LongBench tests ``list != 0``, always true), so "no class found" scores 0.
    """
    if not all_classes:
        raise ValueError("classification: expected the item's 'all_classes' list, got none")
    matches = [name for name in all_classes if name in prediction]
    for name in matches:  # noqa: B007 — removing while iterating is LongBench's behaviour, kept on purpose
        if name in ground_truth and name != ground_truth:
            matches.remove(name)
    return 1.0 / len(matches) if ground_truth in matches else 0.0


def fuzz_ratio(a: str, b: str) -> int:
    """fuzzywuzzy's ``fuzz.ratio`` with python-Levenshtein: 100 if equal, 0 if one is empty, else rounded 100*ratio."""
    if a == b:
        return 100
    if not a or not b:
        return 0
    return int(round(100 * Levenshtein.ratio(a, b)))


def first_code_line(prediction: str) -> str:
    """The first line of ``prediction`` without a backtick, ``#`` or ``//`` ("" if none), as LongBench picks it."""
    for line in prediction.lstrip("\n").split("\n"):
        if "`" not in line and "#" not in line and "//" not in line:
            return line
    return ""


def code_sim_score(prediction: str, ground_truth: str, **_) -> float:
    return fuzz_ratio(first_code_line(prediction), ground_truth) / 100


METRICS = {
    "qa_f1": qa_f1_score,
    "rouge": rouge_score,
    "classification": classification_score,
    "retrieval": retrieval_score,
    "retrieval_zh": retrieval_zh_score,
    "count": count_score,
    "code_sim": code_sim_score,
}


# -- Chinese variants (need jieba for word segmentation, imported only when used) ------------------------------------

_ZH_PUNCTUATION = frozenset(
    string.punctuation
    + "！？｡。＂＃＄％＆＇（）＊＋，－／：；＜＝＞＠［＼］＾＿｀｛｜｝～｟｠｢｣､、〃》「」『』【】〔〕〖〗〘〙〚〛〜〝〞〟〰〾〿–—‘’‛“”„‟…‧﹏."
)


def _jieba_cut(text: str) -> list[str]:
    try:
        import jieba
    except ImportError:
        raise ValueError("the Chinese metrics need jieba (pip install jieba), which is not installed") from None
    return list(jieba.cut(text, cut_all=False))


def normalize_zh_answer(text: str) -> str:
    """LongBench's Chinese normalisation: lower case, drop ASCII and CJK punctuation, drop all whitespace."""
    return "".join("".join(ch for ch in text.lower() if ch not in _ZH_PUNCTUATION).split())


def qa_f1_zh_score(prediction: str, ground_truth: str, **_) -> float:
    pred = [t for t in (normalize_zh_answer(w) for w in _jieba_cut(prediction)) if t]
    ref = [t for t in (normalize_zh_answer(w) for w in _jieba_cut(ground_truth)) if t]
    return token_f1(pred, ref)


def rouge_zh_score(prediction: str, ground_truth: str, **_) -> float:
    return rouge_score(" ".join(_jieba_cut(prediction)), " ".join(_jieba_cut(ground_truth)))


METRICS.update({"qa_f1_zh": qa_f1_zh_score, "rouge_zh": rouge_zh_score})
