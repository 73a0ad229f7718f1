"""Knowing whether pretraining works: held-out validation per language and a language-ID probe.

- `valid_set`: the capped, deterministic held-out utterances of ``data.valid``, split over ranks;
- `validate`: the objective's loss and metrics with masks fixed per utterance, overall and per
  (corpus, language), plus the mean-pooled features the probe reads;
- `probe`: a multinomial logistic-regression language-ID probe on frozen features;
- `plot`: the curves of a run directory (`xlsr plot`).
"""
