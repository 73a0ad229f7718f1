"""Small copies of real corpora's on-disk layouts, with generated audio in each corpus's real formats
and sample rates (Common Voice mp3 at 48 kHz, MLS flac/opus, VoxPopuli ogg, BABEL 8 kHz NIST SPHERE in
µ-law, A-law and PCM, VoxLingua107 and FLEURS wav), for the layout tests."""

from __future__ import annotations

import zlib
from pathlib import Path

import numpy as np
import soundfile as sf

# (libsndfile format, subtype) per suffix, as the corpora ship them.
FORMATS = {
    ".mp3": ("MP3", "MPEG_LAYER_III"),
    ".flac": ("FLAC", "PCM_16"),
    ".opus": ("OGG", "OPUS"),
    ".ogg": ("OGG", "VORBIS"),
    ".wav": ("WAV", "PCM_16"),
}


def speech_like(seconds: float, rate: int, seed: int = 0, pause_every: float = 2.0) -> np.ndarray:
    """Bursts of filtered noise ("words") of about `pause_every` seconds separated by 0.3 s silences."""
    rng = np.random.default_rng(seed)
    parts, total = [], 0
    target = int(seconds * rate)
    while total < target:
        word = rng.normal(0, 0.2, int(rng.uniform(0.5, 1.5) * pause_every * rate)).astype(np.float32)
        word = np.convolve(word, np.ones(4) / 4, mode="same").astype(np.float32)
        parts += [word, np.zeros(int(0.3 * rate), np.float32)]
        total += len(word) + int(0.3 * rate)
    return np.concatenate(parts)[:target]


def write_audio(
    path: Path, seconds: float = 1.0, rate: int = 16000, seed: int = 0, subtype: str | None = None
):
    path.parent.mkdir(parents=True, exist_ok=True)
    suffix = path.suffix.lower()
    if suffix == ".sph":
        fmt, sub = "NIST", subtype or "ULAW"
    else:
        fmt, sub = FORMATS[suffix]
    audio = speech_like(seconds, rate, seed)
    # In blocks: libsndfile 1.2 crashes writing minutes of Ogg Vorbis in one call.
    with sf.SoundFile(path, "w", rate, 1, sub, format=fmt) as handle:
        for start in range(0, len(audio), 10 * rate):
            handle.write(audio[start : start + 10 * rate])
    return path


def common_voice(root: Path) -> Path:
    """`cv-corpus-17.0-2024-03-15/{de,zh-HK,sv-SE}/` under `root`: validated.tsv contains the dev and
    test clips; other.tsv one unvalidated clip; one validated clip is in no split. Returns the release."""
    release = root / "cv-corpus-17.0-2024-03-15"
    columns = "client_id path sentence_id sentence sentence_domain up_votes down_votes age gender accents"
    header = "\t".join([*columns.split(), "variant", "locale", "segment"]) + "\n"
    for language, seed in (("de", 1), ("zh-HK", 2), ("sv-SE", 3)):
        folder = release / language
        clips = [f"common_voice_{language}_{n}.mp3" for n in range(5)]
        for n, clip in enumerate(clips):
            write_audio(folder / "clips" / clip, 1.0, 48000, seed * 10 + n)
        rows = [
            f"spk{n % 3}\t{clip}\tsid{n}\tsentence {n} in {language}\t\t2\t0\t\t\t\t\t{language}\t"
            for n, clip in enumerate(clips[:4])
        ]
        (folder / "validated.tsv").write_text(header + "\n".join(rows) + "\n")
        (folder / "train.tsv").write_text(header + "\n".join(rows[:2]) + "\n")
        (folder / "dev.tsv").write_text(header + rows[2] + "\n")
        (folder / "test.tsv").write_text(header + rows[3] + "\n")
        other = f"spk9\t{clips[4]}\tsid4\tunchecked\t\t0\t0\t\t\t\t\t{language}\t"
        (folder / "other.tsv").write_text(header + other + "\n")
        (folder / "invalidated.tsv").write_text(header)
        durations = "".join(f"{clip}\t1000\n" for clip in clips)
        (folder / "clip_durations.tsv").write_text("clip\tduration[ms]\n" + durations)
    return release


def mls(root: Path) -> Path:
    """`mls_german/` (flac) and both `mls_polish/` and `mls_polish_opus/` releases, 16 kHz, with
    train/dev/test and transcripts.txt. Returns `root`."""
    for release, suffix in (("mls_german", ".flac"), ("mls_polish", ".flac"), ("mls_polish_opus", ".opus")):
        rate = 48000 if suffix == ".opus" else 16000
        for split, speaker in (("train", "1001"), ("dev", "2002"), ("test", "3003")):
            lines = []
            for n in range(2):
                name = f"{speaker}_77_{n:06d}"
                write_audio(
                    root / release / split / "audio" / speaker / "77" / f"{name}{suffix}", 1.0, rate, n
                )
                lines.append(f"{name}\tword {n}")
            (root / release / split / "transcripts.txt").write_text("\n".join(lines) + "\n")
    return root


def voxpopuli(root: Path, session_seconds: float = 70.0) -> Path:
    """A download root with `raw_audios/fr/2019/<session>.ogg` (a long session) and the same session
    cut by `get_unlabelled_data` into `unlabelled_data/fr/2019/<session>_<n>.ogg`. Returns `root`."""
    session = "20190415-0900-PLENARY"
    write_audio(root / "raw_audios" / "fr" / "2019" / f"{session}.ogg", session_seconds, 16000, 5)
    for n in range(3):
        write_audio(root / "unlabelled_data" / "fr" / "2019" / f"{session}_{n}.ogg", 8.0, 16000, 20 + n)
    # `--subset asr` also fetches sessions in their original, mixed languages
    write_audio(root / "raw_audios" / "original" / "2019" / "20190415-0900-PLENARY_original.ogg", 2.0)
    return root


def babel_lao(root: Path) -> Path:
    """An LDC pack as `IARPA_Babel_203/` (no phase in Lao's name) with one conversation side in wav."""
    pack = root / "IARPA_Babel_203"
    write_audio(
        pack / "conversational" / "training" / "audio" / "BABEL_OP1_203_11111_20130101_000000_inLine.wav"
    )
    return pack


def babel(root: Path) -> Path:
    """`BABEL_OP2_202/` (Swahili) with conversational training/sub-train/dev/eval and scripted
    training, 8 kHz SPHERE in µ-law, A-law and PCM, one transcript. Returns the pack."""
    pack = root / "BABEL_OP2_202"
    conversational = pack / "conversational"
    names = {
        "training": ("10524_20131009_200043_inLine", "ULAW"),
        "dev": ("20322_20131010_100000_outLine", "ALAW"),
        "eval": ("30456_20131011_110000_inLine", "ULAW"),
    }
    for split, (stem, subtype) in names.items():
        write_audio(conversational / split / "audio" / f"BABEL_OP2_202_{stem}.sph", 2.0, 8000, 7, subtype)
    sub = conversational / "sub-train" / "audio" / f"BABEL_OP2_202_{names['training'][0]}.sph"
    write_audio(sub, 2.0, 8000, 7, "ULAW")
    transcript = conversational / "training" / "transcription" / f"BABEL_OP2_202_{names['training'][0]}.txt"
    transcript.parent.mkdir(parents=True, exist_ok=True)
    transcript.write_text("[0.000]\n<no-speech>\n[0.500]\nhabari yako\n[2.000]\n")
    scripted = pack / "scripted" / "training" / "audio" / "BABEL_OP2_202_40111_20131012_120000_scripted.sph"
    write_audio(scripted, 2.0, 8000, 8, "PCM_16")
    return pack


def voxlingua(root: Path, into_train: bool = False) -> Path:
    """`{iw,jw,en}/<video>__U__S<n>---<start>-<end>.wav` (under `train/` with `into_train`, as
    speechbrain's recipe unzips them) and `dev/en/...` at 16 kHz. Returns `root`."""
    train = root / "train" if into_train else root
    for language in ("iw", "jw", "en"):
        for n in range(2):
            name = f"vid{language}A__U__S{n}---000{n}.000-000{n + 1}.500.wav"
            write_audio(train / language / name, 1.0, 16000, n)
    write_audio(root / "dev" / "en" / "devvid__U__S0---0001.000-0002.500.wav", 1.0, 16000, 9)
    return root


def fleurs(root: Path) -> Path:
    """`{de_de,cmn_hans_cn}/` with headerless {train,dev,test}.tsv and audio/<split>/*.wav at 16 kHz."""
    for language in ("de_de", "cmn_hans_cn"):
        for split in ("train", "dev", "test"):
            rows = []
            for n in range(2):
                name = f"{zlib.crc32(f'{language}/{split}/{n}'.encode()) % 10**8}.wav"
                write_audio(root / language / "audio" / split / name, 1.0, 16000, n)
                rows.append(f"{1000 + n}\t{name}\tRaw text {n}.\traw text {n}\tr a w\t16000\tFEMALE")
            (root / language / f"{split}.tsv").write_text("\n".join(rows) + "\n")
    return root
