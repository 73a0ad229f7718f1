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


def format_probability_table(
    hours: Mapping[StreamKey, float],
    probs: Mapping[StreamKey, float],
    stored_hours: Mapping[StreamKey, float] | None = None,
) -> str:
    """The table printed at startup and by `xlsr stats`: hours and share before/after upsampling.
    ``hours`` are what the shares are computed from; ``stored_hours``, when given, are shown beside
    them (the audio on disk, of which the model sees ``hours``)."""
    total = sum(hours.values()) or 1.0
    rows = sorted(hours, key=lambda key: (-hours[key], key))
    corpus_width = max([14, *(len(key[0]) + 2 for key in rows)])
    language_width = max([10, *(len(key[1]) + 2 for key in rows)])
    stored = f"{'stored h':>10}" if stored_hours is not None else ""
    header = (
        f"{'corpus':<{corpus_width}}{'language':<{language_width}}{'hours':>10}{stored}"
        f"{'natural %':>11}{'sampled %':>11}{'x':>8}"
    )
    lines = [header, "-" * len(header)]
    for key in rows:
        natural = hours[key] / total
        sampled = probs.get(key, 0.0)
        ratio = sampled / natural if natural > 0 else float("inf")
        shares = f"{100 * natural:>10.2f}%{100 * sampled:>10.2f}%{ratio:>8.2f}"
        kept = f"{stored_hours.get(key, 0.0):>10.3f}" if stored_hours is not None else ""
        lines.append(f"{key[0]:<{corpus_width}}{key[1]:<{language_width}}{hours[key]:>10.3f}{kept}{shares}")
    lines.append("-" * len(header))
    kept = f"{sum(stored_hours.values()):>10.3f}" if stored_hours is not None else ""
    lines.append(
        f"{'total':<{corpus_width + language_width}}{sum(hours.values()):>10.3f}{kept}"
        f"{100.0:>10.2f}%{100 * sum(probs.values()):>10.2f}%"
    )
    return "\n".join(lines)
