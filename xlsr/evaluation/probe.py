"""A language-ID probe: multinomial logistic regression on frozen, mean-pooled features.

Half of each language's utterances (chosen by a hash of the key, so the split never depends on the
order or the number of ranks) train the probe, the other half score it. Features are standardised
with the training half's statistics; the probe is fitted by full-batch L-BFGS in float64 with a
small L2 penalty, on the CPU, from zeros: the result is deterministic. A few seconds for thousands of
utterances. The same probe on the randomly initialised model (update 0) is the baseline to beat:
a trained model's features should separate languages far better.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from xlsr.evaluation.valid_set import key_hash

L2 = 1e-3
MAX_ITERATIONS = 200


@dataclass
class ProbeResult:
    accuracy: float  # on the held-out half
    per_class: dict[int, float]  # label -> accuracy on its held-out utterances
    train_size: int
    test_size: int


def split_by_key(keys: list[str], labels: torch.Tensor) -> torch.Tensor:
    """True = train: within each label, every other utterance in key-hash order."""
    train = torch.zeros(len(keys), dtype=torch.bool)
    for label in labels.unique().tolist():
        members = sorted(
            (key_hash(keys[i]), keys[i], i) for i in (labels == label).nonzero().flatten().tolist()
        )
        for rank, (_, _, index) in enumerate(members):
            train[index] = rank % 2 == 0 or len(members) == 1
    return train


def lid_probe(features: torch.Tensor, labels: torch.Tensor, keys: list[str]) -> ProbeResult:
    """Fit on one half, score on the other; ``features`` (N, D), ``labels`` (N,) in [0, C)."""
    train = split_by_key(keys, labels)
    x = features.double()
    mean, std = x[train].mean(0), x[train].std(0).clamp_min(1e-6)
    x = (x - mean) / std
    weights = fit_logistic_regression(x[train], labels[train], int(labels.max()) + 1)
    predicted = (x[~train] @ weights[:-1] + weights[-1]).argmax(-1)
    truth = labels[~train]
    correct = predicted == truth
    per_class = {int(c): float(correct[truth == c].double().mean()) for c in truth.unique()}
    accuracy = float(correct.double().mean()) if len(truth) else 0.0
    return ProbeResult(accuracy, per_class, int(train.sum()), int((~train).sum()))


def fit_logistic_regression(x: torch.Tensor, y: torch.Tensor, classes: int) -> torch.Tensor:
    """(D + 1, C) weights and bias minimising cross-entropy + L2/2·|W|²."""
    weights = torch.zeros(x.shape[1] + 1, classes, dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.LBFGS(
        [weights], lr=1.0, max_iter=MAX_ITERATIONS, tolerance_grad=1e-9, line_search_fn="strong_wolfe"
    )

    def objective() -> torch.Tensor:
        optimizer.zero_grad()
        logits = x @ weights[:-1] + weights[-1]
        loss = torch.nn.functional.cross_entropy(logits, y) + L2 / 2 * weights[:-1].square().sum()
        loss.backward()
        return loss

    optimizer.step(objective)
    return weights.detach()
