"""Raw corpora to 16 kHz mono WebDataset shards, per (corpus, language), with an index.

- `manifest`: find the audio files of a corpus (directory tree, TSV/JSONL manifest, Common Voice, MLS,
  VoxPopuli) as `SourceRecord`s.
- `audio`: decode, downmix and resample one file, or say why it is unusable (`AudioError.reason`).
- `writer`: plan shards deterministically, write them (in parallel, resumably) and merge the index.
- `stats`: hours per stream, upsampling table and plot from an index.
- `synthetic`: a small, speech-like multilingual demo corpus.
- `cli`: the `xlsr shard` and `xlsr stats` subcommands.
"""
