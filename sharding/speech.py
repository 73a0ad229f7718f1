"""A small multilingual *speech* corpus with phone transcriptions, spoken by eSpeak NG: no downloads.

`sharding.synthetic` makes the demo corpus from formant-synthesised "languages" that are not speech.
This module speaks real text in nine real languages of nine families, so that what a model learns can
be checked against language facts: every utterance comes with its text and the IPA phones eSpeak NG
spoke (`sharding.espeak`), which a phone probe or a phone-level evaluation can use.

**Languages.** English (Germanic), Spanish (Romance), Russian (Slavic), Hindi (Indo-Aryan), Turkish
(Turkic), Finnish (Uralic), Arabic (Semitic), Tamil (Dravidian) and Indonesian (Austronesian):
languages whose eSpeak NG phonemisation of their own frequent words never switches to another
language. (Vietnamese was left out because eSpeak writes its tones as digits inside the phones; Hebrew
because unvocalised text comes out without vowels.) Amounts are deliberately unbalanced, like real
multilingual data: 230 s of English down to 45 s of Tamil and Indonesian at scale 1.0 (835 s in
all, about 14 minutes; at scale 1.0 or more, every speaker of every language speaks at least once).

**Text.** "Sentences" of 3-9 words drawn from the language's 3000 most frequent words (`wordfreq`),
weighted by frequency^0.5 so that content words occur and not only function words. Words with
digits, punctuation or another script are dropped, and so is any word or sentence that eSpeak reads
with another language's rules (its "(en)" markers). An utterance is one or more sentences, each
ending in '.', until a drawn target of 1.5-8 s is reached.

**Speakers.** Eight per language, each an eSpeak voice variant (male m1-m8, female f1-f5) with its
own pitch, pitch range and speaking rate, recorded in its own "room": a speaker-specific spectral
tilt, a short synthetic reverb (an exponentially decaying noise impulse response with RT60 0.1-0.4 s,
mixed at a speaker-specific wet level), background noise at 25-35 dB SNR and a recording level. So
held-out speakers differ from the training ones in voice and channel, as in real corpora. Names are
`<language>-spkNN`, with the seed in them for seeds other than 0 (`en-s3-spk01`), because file
names make sample keys and two draws of the corpus must never share one.

**Files.** `ROOT/<language>/<speaker>/<language>_<i:04d>.<ext>`, with sample rates (8-48 kHz) and
formats (wav, flac, ogg) cycling as in `sharding.synthetic`; eSpeak's 22050 Hz output is resampled
in the frequency domain (exact band-limited resampling, with a raised-cosine roll-off over the top
10 % of the band against ringing). Like the demo corpus it has one stereo file, one too-short clip
(0.1 s) and one corrupt file (random bytes), for `xlsr shard` to downmix and to skip and count.
`ROOT/manifest.jsonl` lists every file (the awkward ones too), one JSON object per line: `path`
(relative to ROOT), `language`, `speaker`, `duration`, `text` and `phones` (space-separated IPA,
stress removed, length marks kept, word boundaries not marked). Shard it with the manifest as input
(`xlsr shard ROOT/manifest.jsonl OUT --valid-seconds S`): the held-out split is then by speaker, and
each sample carries its `phn` member (`xlsr.data.shard_format`).

Deterministic for a seed (Ogg Vorbis files decode to the same audio, but their container serial
numbers are random in libsndfile) and idempotent: `ROOT/.complete` is written last, and when it
exists nothing is done.
"""

from __future__ import annotations

import json
import math
import multiprocessing
import unicodedata
import zlib
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import numpy as np
import soundfile as sf

from sharding import espeak
from sharding.synthetic import FORMATS, MARKER, SAMPLE_RATES
from xlsr.fileio import atomic_write_text

MANIFEST_NAME = "manifest.jsonl"


@dataclass(frozen=True)
class Language:
    tag: str  # eSpeak NG voice, wordfreq language and BCP-47 tag at once
    seconds: float  # audio at scale 1.0
    script: str  # Unicode script name prefix of its words' letters ("LATIN", "CYRILLIC", ...)
    family: str


LANGUAGES = (
    Language("en", 230.0, "LATIN", "Indo-European, Germanic"),
    Language("es", 140.0, "LATIN", "Indo-European, Romance"),
    Language("ru", 110.0, "CYRILLIC", "Indo-European, Slavic"),
    Language("hi", 85.0, "DEVANAGARI", "Indo-European, Indo-Aryan"),
    Language("tr", 70.0, "LATIN", "Turkic"),
    Language("fi", 60.0, "LATIN", "Uralic"),
    Language("ar", 50.0, "ARABIC", "Afro-Asiatic, Semitic"),
    Language("ta", 45.0, "TAMIL", "Dravidian"),
    Language("id", 45.0, "LATIN", "Austronesian"),
)
SPEAKERS_PER_LANGUAGE = 8
VOCABULARY_SIZE = 3000
FREQUENCY_POWER = 0.5  # word weight = frequency ** this: flatter than Zipf, so content words occur
SENTENCE_WORDS = (3, 9)
UTTERANCE_SECONDS = (1.5, 8.0)
MALE_VARIANTS = tuple(f"m{k}" for k in range(1, 9))
FEMALE_VARIANTS = tuple(f"f{k}" for k in range(1, 6))
# The awkward files: the first utterance of one language is stereo; a 0.1 s clip and a corrupt file
# sit in the folder of another language's first speaker.
STEREO_LANGUAGE, SHORT_LANGUAGE, CORRUPT_LANGUAGE = "ru", "tr", "fi"
SHORT_SECONDS = 0.1
_MAX_DRAWS = 100  # sentences drawn before giving up on one without a language switch


@dataclass(frozen=True)
class SpeechSpeaker:
    """A voice and its recording channel."""

    name: str
    voice: str  # eSpeak voice with variant: "en+f3"
    pitch: int  # eSpeak 0-99
    pitch_range: int  # eSpeak 0-99
    rate_wpm: int
    tilt: float  # first-order FIR y[n] = x[n] - tilt * x[n-1]: > 0 brighter, < 0 duller
    rt60: float  # reverb decay time, seconds
    wet: float  # reverb level relative to the dry signal
    snr_db: float  # background noise
    level: float  # peak level of a recording
    seed: int  # its impulse response and noise draws


def speakers(language: str, seed: int = 0) -> list[SpeechSpeaker]:
    """The language's speakers for `seed`: voice variants drawn without replacement, so no two of a
    language share one."""
    rng = np.random.default_rng([seed, zlib.crc32(language.encode()), 1])
    prefix = f"{language}-spk" if seed == 0 else f"{language}-s{seed}-spk"
    variants = [*MALE_VARIANTS, *FEMALE_VARIANTS]
    chosen = rng.choice(len(variants), SPEAKERS_PER_LANGUAGE, replace=False)
    result = []
    for k, index in enumerate(chosen):
        variant = variants[int(index)]
        female = variant.startswith("f")
        result.append(
            SpeechSpeaker(
                name=f"{prefix}{k:02d}",
                voice=f"{language}+{variant}",
                pitch=int(rng.integers(50, 90) if female else rng.integers(15, 55)),
                pitch_range=int(rng.integers(20, 80)),
                rate_wpm=int(rng.integers(130, 221)),
                tilt=float(rng.uniform(-0.6, 0.6)),
                rt60=float(rng.uniform(0.1, 0.4)),
                wet=float(rng.uniform(0.05, 0.5)),
                snr_db=float(rng.uniform(25.0, 35.0)),
                level=float(rng.uniform(0.3, 0.9)),
                seed=int(rng.integers(2**31)),
            )
        )
    return result


# --------------------------------------------------------------------------------------------------
# Text


def _in_script(word: str, script: str) -> bool:
    """Every character a letter or mark of `script` (no digits, punctuation or other scripts)."""
    return bool(word) and all(
        unicodedata.category(ch)[0] in "LM" and unicodedata.name(ch, "").startswith(script) for ch in word
    )


@cache
def vocabulary(language: str) -> tuple[tuple[str, ...], np.ndarray]:
    """(words, draw probabilities): of the language's VOCABULARY_SIZE most frequent words, those in its
    own script that eSpeak reads with the language's own rules, weighted by frequency **
    FREQUENCY_POWER.

    wordfreq's list holds words in bands of equal rounded frequency: band i is frequency 10^(-i/100)
    (what `wordfreq.word_frequency` returns for them, read here without looking each word up)."""
    import wordfreq  # 0.05-0.2 s per language to load its list

    script = next(lang.script for lang in LANGUAGES if lang.tag == language)
    candidates: list[tuple[str, int]] = []
    for band, band_words in enumerate(wordfreq.get_frequency_list(language)):
        candidates += [(word, band) for word in band_words]
        if len(candidates) >= VOCABULARY_SIZE:
            break
    kept = [
        (word, band)
        for word, band in candidates[:VOCABULARY_SIZE]
        if _in_script(word, script) and "(" not in espeak.phonemize_raw(word, language)
    ]
    weights = 10.0 ** (-np.array([band for _, band in kept]) / 100.0 * FREQUENCY_POWER)
    return tuple(word for word, _ in kept), weights / weights.sum()


def draw_sentence(language: str, rng: np.random.Generator) -> tuple[str, list[str]]:
    """(text, phones) of a sentence of 3-9 words, ending in '.'; redrawn while eSpeak would read part
    of it as another language."""
    words, probabilities = vocabulary(language)
    for _ in range(_MAX_DRAWS):
        count = int(rng.integers(SENTENCE_WORDS[0], SENTENCE_WORDS[1] + 1))
        text = " ".join(words[i] for i in rng.choice(len(words), count, p=probabilities)) + "."
        try:
            return text, espeak.phonemize(text, language)
        except espeak.EspeakError:
            continue
    raise RuntimeError(f"{language}: no sentence without a language switch in {_MAX_DRAWS} draws")


# --------------------------------------------------------------------------------------------------
# Signal processing


def _smooth_size(n: int) -> int:
    """The smallest 5-smooth number >= n: a fast FFT length."""
    while True:
        m = n
        for p in (2, 3, 5):
            while m % p == 0:
                m //= p
        if m == 1:
            return n
        n += 1


def resample(audio: np.ndarray, rate_in: int, rate_out: int) -> np.ndarray:
    """Band-limited resampling in the frequency domain: the signal (zero-padded to a length both rates
    divide exactly) keeps its spectrum below the lower Nyquist frequency, with a raised-cosine roll-off
    over that band's top 10 %, and nothing above it (no aliasing)."""
    if rate_in == rate_out:
        return audio.astype(np.float32)
    g = math.gcd(rate_in, rate_out)
    step_in, step_out = rate_in // g, rate_out // g
    blocks = _smooth_size(-(-len(audio) // step_in))
    n_in, n_out = blocks * step_in, blocks * step_out
    spectrum = np.fft.rfft(audio, n_in)
    freqs = np.fft.rfftfreq(n_in, 1.0 / rate_in)
    cutoff = min(rate_in, rate_out) / 2
    ramp = np.clip((freqs - 0.9 * cutoff) / (0.1 * cutoff), 0.0, 1.0)
    spectrum *= 0.5 + 0.5 * np.cos(np.pi * ramp)  # 1 below 0.9 * cutoff, 0 at and above it
    out_spectrum = np.zeros(n_out // 2 + 1, complex)
    keep = min(len(spectrum), len(out_spectrum))
    out_spectrum[:keep] = spectrum[:keep]
    out = np.fft.irfft(out_spectrum, n_out) * (n_out / n_in)
    return out[: round(len(audio) * rate_out / rate_in)].astype(np.float32)


def _impulse_response(speaker: SpeechSpeaker, rate: int) -> np.ndarray:
    """The speaker's room: noise decaying by 60 dB over RT60, unit energy."""
    rng = np.random.default_rng([speaker.seed, 1])
    t = np.arange(int(speaker.rt60 * rate)) / rate
    response = rng.normal(0.0, 1.0, len(t)) * np.exp(-3 * np.log(10) * t / speaker.rt60)
    return response / np.sqrt(np.sum(response**2))


def _convolve(signal: np.ndarray, response: np.ndarray) -> np.ndarray:
    size = _smooth_size(len(signal) + len(response) - 1)
    full = np.fft.irfft(np.fft.rfft(signal, size) * np.fft.rfft(response, size), size)
    return full[: len(signal)]


def record(dry: np.ndarray, speaker: SpeechSpeaker, rate: int, rng: np.random.Generator) -> np.ndarray:
    """The speaker's channel applied to eSpeak's output: tilt, reverb, level and noise."""
    tilted = dry.astype(np.float64)
    tilted[1:] -= speaker.tilt * dry[:-1]
    rms = np.sqrt(np.mean(tilted**2)) + 1e-12
    room = _convolve(tilted, _impulse_response(speaker, rate))
    wet = room * (speaker.wet * rms / (np.sqrt(np.mean(room**2)) + 1e-12))
    speech = tilted + wet
    speech_rms = np.sqrt(np.mean(speech[np.abs(speech) > 0.1 * np.abs(speech).max()] ** 2))
    snr_db = speaker.snr_db + rng.uniform(-2.0, 2.0)
    noisy = speech + rng.normal(0.0, speech_rms * 10 ** (-snr_db / 20), len(speech))
    level = speaker.level * rng.uniform(0.85, 1.0)
    return (noisy * (level / np.abs(noisy).max())).astype(np.float32)


# --------------------------------------------------------------------------------------------------
# The corpus


@dataclass(frozen=True)
class Utterance:
    audio: np.ndarray  # at espeak.SAMPLE_RATE
    text: str
    phones: list[str]


def speak_utterance(language: str, speaker: SpeechSpeaker, rng: np.random.Generator) -> Utterance:
    """Sentences by one speaker, separated by short pauses, until a target length drawn from
    UTTERANCE_SECONDS (a sentence that would pass the upper bound is dropped), then recorded."""
    rate = espeak.SAMPLE_RATE
    target = rng.uniform(*UTTERANCE_SECONDS) * rate
    parts: list[np.ndarray] = [np.zeros(int(rng.uniform(0.05, 0.25) * rate), np.float32)]
    trailing = np.zeros(int(rng.uniform(0.05, 0.25) * rate), np.float32)
    texts: list[str] = []
    phones: list[str] = []
    length = len(parts[0]) + len(trailing)
    while length < target:
        text, sentence_phones = draw_sentence(language, rng)
        audio, _ = espeak.synthesize(
            text,
            speaker.voice,
            speaker.rate_wpm,
            speaker.pitch,
            speaker.pitch_range,
            seed=int(rng.integers(2**31)),
        )
        pause = np.zeros(int(rng.uniform(0.1, 0.35) * rate) if texts else 0, np.float32)
        if texts and length + len(pause) + len(audio) > UTTERANCE_SECONDS[1] * rate:
            break
        parts += [pause, audio]
        texts.append(text)
        phones += sentence_phones
        length += len(pause) + len(audio)
    parts.append(trailing)
    audio = record(np.concatenate(parts), speaker, rate, rng)
    return Utterance(audio, " ".join(texts), phones)


def _entry(root: Path, path: Path, language: str, speaker: str, duration: float | None, **extra) -> dict:
    entry = {"path": path.relative_to(root).as_posix(), "language": language, "speaker": speaker}
    if duration is not None:
        entry["duration"] = round(duration, 4)
    return entry | extra


def _write_language(
    root: Path, position: int, language: Language, seconds: float, seed: int, min_utterances: int = 1
) -> list[dict]:
    """The language's utterances until `seconds` of audio (and at least `min_utterances`), speakers in
    turn; rates and formats cycle so every combination occurs. Returns their manifest entries."""
    rng = np.random.default_rng([seed, zlib.crc32(language.tag.encode()), 2])
    voices = speakers(language.tag, seed)
    order = rng.permutation(len(voices))
    entries, total, i = [], 0.0, 0
    while total < seconds or i < min_utterances:
        speaker = voices[int(order[i % len(voices)])]
        utterance = speak_utterance(language.tag, speaker, rng)
        rate = SAMPLE_RATES[(i + position) % len(SAMPLE_RATES)]
        extension = list(FORMATS)[(i + position) % len(FORMATS)]
        audio = resample(utterance.audio, espeak.SAMPLE_RATE, rate)
        if language.tag == STEREO_LANGUAGE and i == 0:
            delayed = 0.6 * np.roll(audio, max(1, rate // 1000))  # the other microphone, 1 ms later
            audio = np.stack([audio, delayed + rng.normal(0, 1e-3, len(audio)).astype(np.float32)], axis=1)
        path = root / language.tag / speaker.name / f"{language.tag}_{i:04d}.{extension}"
        path.parent.mkdir(parents=True, exist_ok=True)
        sf.write(path, audio, rate, subtype=FORMATS[extension])
        duration = len(audio) / rate
        entries.append(
            _entry(
                root,
                path,
                language.tag,
                speaker.name,
                duration,
                text=utterance.text,
                phones=" ".join(utterance.phones),
            )
        )
        total += duration
        i += 1
    return entries


def _write_awkward_files(root: Path, seed: int) -> list[dict]:
    """A clip too short to train on (cut from real speech, so it has no transcript) and a corrupt
    file: random bytes with an audio extension. Both are listed: the sharder skips and counts them."""
    rng = np.random.default_rng([seed, 7])
    speaker = speakers(SHORT_LANGUAGE, seed)[0]
    utterance = speak_utterance(SHORT_LANGUAGE, speaker, rng)
    start = int(0.3 * 16000)  # past the leading silence
    clip = resample(utterance.audio, espeak.SAMPLE_RATE, 16000)[start : start + int(SHORT_SECONDS * 16000)]
    short = root / SHORT_LANGUAGE / speaker.name / f"{SHORT_LANGUAGE}_short.wav"
    short.parent.mkdir(parents=True, exist_ok=True)
    sf.write(short, clip, 16000, subtype="PCM_16")
    corrupt_speaker = speakers(CORRUPT_LANGUAGE, seed)[0].name
    corrupt = root / CORRUPT_LANGUAGE / corrupt_speaker / f"{CORRUPT_LANGUAGE}_corrupt.flac"
    corrupt.parent.mkdir(parents=True, exist_ok=True)
    corrupt.write_bytes(rng.bytes(4096))
    return [
        _entry(root, short, SHORT_LANGUAGE, speaker.name, len(clip) / 16000),
        _entry(root, corrupt, CORRUPT_LANGUAGE, corrupt_speaker, None),
    ]


PROCESS_GROUPS = 2  # languages are spoken in this many fresh processes, whatever `workers` is
_AWKWARD = -1  # the position that stands for the awkward files in a group


def process_groups() -> list[list[int]]:
    """Language positions per process: longest first to the group with the least audio (the same
    groups for every scale and seed); the awkward files go last into the lightest group."""
    groups: list[list[int]] = [[] for _ in range(PROCESS_GROUPS)]
    loads = [0.0] * PROCESS_GROUPS
    for position in sorted(range(len(LANGUAGES)), key=lambda i: -LANGUAGES[i].seconds):
        lightest = loads.index(min(loads))
        groups[lightest].append(position)
        loads[lightest] += LANGUAGES[position].seconds
    groups[loads.index(min(loads))].append(_AWKWARD)
    return groups


def _run_group(task: tuple[str, list[int], float, int]) -> dict[int, list[dict]]:
    """A fresh process's work: its languages' utterances and maybe the awkward files, by position."""
    root, positions, scale, seed = Path(task[0]), task[1], task[2], task[3]
    every_speaker = SPEAKERS_PER_LANGUAGE if scale >= 1 else 1  # at full size, every speaker speaks
    done = {}
    for position in positions:
        if position == _AWKWARD:
            done[position] = _write_awkward_files(root, seed)
        else:
            language = LANGUAGES[position]
            seconds = language.seconds * scale
            done[position] = _write_language(root, position, language, seconds, seed, every_speaker)
    return done


def generate_speech_corpus(root: str | Path, seed: int = 0, scale: float = 1.0, workers: int = 2) -> Path:
    """Write the speech corpus and its manifest under `root` (see the module docstring); return `root`.

    Deterministic for a seed; idempotent: the marker `root/.complete` is written last, and when it
    exists nothing is done. About 14 minutes of audio at scale 1.0, in about 10 s on two cores.

    eSpeak NG keeps state from one synthesis to the next that no call resets (the phase of its pitch
    flutter, its gain control), so the same text can come out a few samples longer or shorter later
    in a process. The languages are therefore spoken in a fixed set of fresh processes
    (`process_groups`, `workers` at a time), where the sequence of calls, and so the audio, depends
    on the seed and scale alone.
    """
    root = Path(root)
    if (root / MARKER).exists():
        return root
    if scale <= 0:
        raise ValueError(f"scale must be positive, got {scale}")
    tasks = [(str(root), positions, scale, seed) for positions in process_groups()]
    # spawn, one task per process: a forked or reused process would carry another's eSpeak state.
    context = multiprocessing.get_context("spawn")
    by_position: dict[int, list[dict]] = {}
    with context.Pool(max(1, min(workers, len(tasks))), maxtasksperchild=1) as pool:
        for done in pool.imap_unordered(_run_group, tasks):
            by_position.update(done)
    entries = [
        entry for position in sorted(by_position, key=lambda i: (i < 0, i)) for entry in by_position[position]
    ]
    lines = "".join(json.dumps(entry, ensure_ascii=False) + "\n" for entry in entries)
    atomic_write_text(root / MANIFEST_NAME, lines)
    marker = {"seed": seed, "scale": scale, "languages": [language.tag for language in LANGUAGES]}
    atomic_write_text(root / MARKER, json.dumps(marker) + "\n")
    return root
