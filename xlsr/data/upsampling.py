"""XLS-R language and corpus upsampling.

XLSR-53 (Conneau et al., arXiv 2006.13979) balances languages by sampling each with p_l ∝ (n_l / N)^α,
the temperature sampling of XLM (Lample and Conneau, arXiv 1901.07291): α = 1 keeps the natural proportions,
α = 0 is uniform, 0.5 boosts low-resource languages without drowning the large ones. XLS-R (Babu et
al., arXiv 2111.09296 §3.1) applies the rule twice, with α = 0.5 both times: languages within each
corpus, p(l|c) ∝ (n_lc / N_c)^α, then corpora, treating each corpus as one language,
p(c) ∝ (N_c / N)^β. A stream (corpus, language) is drawn with p(c)·p(l|c). Amounts are hours of
audio, not utterance counts.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping

StreamKey = tuple[str, str]  # (corpus, language)


def _smoothed_shares(amounts: Mapping[str, float], alpha: float) -> dict[str, float]:
    """Each key's share of the total raised to ``alpha``, renormalised to sum to 1."""
    total = sum(amounts.values())
    if total <= 0:
        raise ValueError("cannot upsample: total amount of audio is zero")
    weights = {key: (amount / total) ** alpha if amount > 0 else 0.0 for key, amount in amounts.items()}
    norm = sum(weights.values())
    return {key: weight / norm for key, weight in weights.items()}


def upsampling_probabilities(
    hours: Mapping[StreamKey, float], language_alpha: float = 0.5, corpus_alpha: float = 0.5
) -> dict[StreamKey, float]:
    """Share of the sampled audio each (corpus, language) stream gets (the loader turns these into
    per-utterance draw probabilities)."""
    for name, alpha in (("language_alpha", language_alpha), ("corpus_alpha", corpus_alpha)):
        if not 0.0 <= alpha <= 1.0:
            raise ValueError(f"{name} must lie in [0, 1], got {alpha}")
    by_corpus: dict[str, dict[str, float]] = defaultdict(dict)
    for (corpus, language), amount in hours.items():
        by_corpus[corpus][language] = amount
    corpus_p = _smoothed_shares({c: sum(langs.values()) for c, langs in by_corpus.items()}, corpus_alpha)
    probs: dict[StreamKey, float] = {}
    for corpus, langs in by_corpus.items():
        for language, p in _smoothed_shares(langs, language_alpha).items():
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
