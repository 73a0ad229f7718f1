"""XLS-R language/corpus upsampling (arXiv 2111.09296 §3; reference spec §3.5).

Languages are balanced within each corpus with p(l|c) ∝ (n_lc / N_c)^α, then corpora with the same
rule, treating each corpus as one language: p(c) ∝ (N_c / N)^β. A stream (corpus, language) is drawn
with p(c)·p(l|c). Amounts are hours of audio, not utterance counts.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping

StreamKey = tuple[str, str]  # (corpus, language)


def _temperature(amounts: Mapping[str, float], alpha: float) -> dict[str, float]:
    total = sum(amounts.values())
    if total <= 0:
        raise ValueError("cannot upsample: total amount of audio is zero")
    weights = {key: (amount / total) ** alpha if amount > 0 else 0.0 for key, amount in amounts.items()}
    norm = sum(weights.values())
    return {key: weight / norm for key, weight in weights.items()}


def upsampling_probabilities(
    hours: Mapping[StreamKey, float], language_alpha: float = 0.5, corpus_alpha: float = 0.5
) -> dict[StreamKey, float]:
    """Probability of drawing the next utterance from each (corpus, language) stream."""
    for name, alpha in (("language_alpha", language_alpha), ("corpus_alpha", corpus_alpha)):
        if not 0.0 <= alpha <= 1.0:
            raise ValueError(f"{name} must lie in [0, 1], got {alpha}")
    by_corpus: dict[str, dict[str, float]] = defaultdict(dict)
    for (corpus, language), amount in hours.items():
        by_corpus[corpus][language] = amount
    corpus_p = _temperature({c: sum(langs.values()) for c, langs in by_corpus.items()}, corpus_alpha)
    probs: dict[StreamKey, float] = {}
    for corpus, langs in by_corpus.items():
        for language, p in _temperature(langs, language_alpha).items():
            probs[(corpus, language)] = corpus_p[corpus] * p
    return probs


def format_probability_table(hours: Mapping[StreamKey, float], probs: Mapping[StreamKey, float]) -> str:
    """The table printed at startup and by `xlsr stats`: hours and share before/after upsampling."""
    total = sum(hours.values()) or 1.0
    rows = sorted(hours, key=lambda key: (-hours[key], key))
    header = f"{'corpus':<14}{'language':<10}{'hours':>10}{'natural %':>11}{'sampled %':>11}{'x':>8}"
    lines = [header, "-" * len(header)]
    for key in rows:
        natural = hours[key] / total
        sampled = probs.get(key, 0.0)
        ratio = sampled / natural if natural > 0 else float("inf")
        shares = f"{100 * natural:>10.2f}%{100 * sampled:>10.2f}%{ratio:>8.2f}"
        lines.append(f"{key[0]:<14}{key[1]:<10}{hours[key]:>10.3f}{shares}")
    lines.append("-" * len(header))
    lines.append(
        f"{'total':<24}{sum(hours.values()):>10.3f}{100.0:>10.2f}%{100 * sum(probs.values()):>10.2f}%"
    )
    return "\n".join(lines)
