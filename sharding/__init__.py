"""Raw corpora to 16 kHz mono WebDataset shards, per (corpus, language), with an index.

The entry points are `shard(ShardJob(...)) -> ShardResult` and `stats(index_path, ...) -> StatsResult`
(module `api`); they raise `ShardError` for user errors and never print. The modules behind them:

- `manifest`: find the audio files of a corpus (directory tree, TSV/JSONL manifest, Common Voice, MLS,
  VoxPopuli) as `SourceRecord`s.
- `audio`: decode, downmix and resample one source file, or say why it is unusable (`AudioError.reason`).
- `split`: which speakers or recordings of each stream are held out for validation (`--valid-seconds`).
- `writer`: plan shards deterministically, write them (in parallel, resumably) and merge the index.
- `samples`: what one decoded file becomes in a tar (keys, segments, members).
- `hours`: hours per stream, upsampling table and plot from an index.
- `synthetic`: a small, speech-like multilingual demo corpus.
- `speech`: a small multilingual speech corpus spoken by eSpeak NG (`espeak`, its ctypes binding), with
  a manifest of texts and IPA phones.
- `layouts`: XLS-R-shaped shard sets without real audio (loader tests and sampling benchmarks).
- `cli`: the `xlsr shard` and `xlsr stats` subcommands (argument parsing and printing only).

The index format itself lives in the library, `xlsr.data.shard_format`, shared with the loader.
"""

from sharding.api import (
    ShardError,
    ShardJob,
    ShardResult,
    StatsResult,
    TaskShare,
    shard,
    stats,
)

__all__ = [
    "ShardError",
    "ShardJob",
    "ShardResult",
    "StatsResult",
    "TaskShare",
    "shard",
    "stats",
]
