"""A minimal ctypes binding to eSpeak NG: speak text, and say which phones it spoke.

eSpeak NG is a formant synthesiser for about a hundred languages: robotic, but real speech with each
language's own phone inventory, stress and intonation, which is what `sharding.speech` needs for a
small multilingual corpus with phone transcriptions. The library comes from the `espeakng-loader`
wheel (the shared library and its `espeak-ng-data`, no system package); a system `libespeak-ng` is
used only where the wheel's library cannot be loaded.

Only four calls are bound: `espeak_Initialize` in synchronous mode (audio arrives through a callback
while `espeak_Synth` runs, in 16-bit chunks at 22050 Hz), `espeak_SetVoiceByName` (a language, with
an optional voice variant: ``en+f3``), `espeak_SetParameter` (rate, pitch, pitch range) and
`espeak_TextToPhonemes` (IPA, one clause per call). The library keeps its voice and parameters in
global state, so every call here holds one lock: use it from one thread at a time per process
(separate processes each load their own copy).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import threading
import unicodedata
from dataclasses import dataclass

import numpy as np

SAMPLE_RATE = 22050  # eSpeak NG's output rate (espeak_Initialize returns it; checked there)

_AUDIO_OUTPUT_SYNCHRONOUS = 2
_POS_CHARACTER = 1
_ESPEAK_CHARS_UTF8 = 1
_ESPEAK_RATE, _ESPEAK_PITCH, _ESPEAK_RANGE = 1, 3, 4
# espeak_TextToPhonemes mode: bit 1 = IPA (UTF-8); bits 8-23 = the separator written between phones.
# Words come out separated by two spaces, phones by one.
_IPA_SPACE_SEPARATED = 0x02 | (ord(" ") << 8)
_STRESS_MARKS = str.maketrans("", "", "ˈˌ")

_SYNTH_CALLBACK = ctypes.CFUNCTYPE(
    ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.c_void_p
)


class EspeakError(RuntimeError):
    """eSpeak NG cannot be loaded, or refused a voice or a text."""


@dataclass
class _Engine:
    lib: ctypes.CDLL
    callback: object  # the ctypes callback: referenced here so it is never garbage-collected
    chunks: list[np.ndarray]
    voice: str | None = None


_LOCK = threading.Lock()
_ENGINE: _Engine | None = None


def _load_library() -> tuple[ctypes.CDLL, str | None]:
    """(library, data path): the `espeakng-loader` wheel's, else the system's (its own data)."""
    try:
        import espeakng_loader

        return ctypes.CDLL(espeakng_loader.get_library_path()), espeakng_loader.get_data_path()
    except (ImportError, OSError, RuntimeError) as exc:
        wheel_error = f"{type(exc).__name__}: {exc}"
    system = ctypes.util.find_library("espeak-ng")
    if system is not None:
        try:
            return ctypes.CDLL(system), None
        except OSError as exc:
            system = f"{system} ({exc})"
    raise EspeakError(
        f"eSpeak NG not found: the espeakng-loader wheel did not load ({wheel_error}) and there is no "
        f"usable system libespeak-ng ({system or 'ctypes.util.find_library found none'}); "
        "`pip install espeakng-loader`"
    )


def _declare(lib: ctypes.CDLL) -> None:
    lib.espeak_Initialize.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
    lib.espeak_Initialize.restype = ctypes.c_int
    lib.espeak_SetSynthCallback.argtypes = [_SYNTH_CALLBACK]
    lib.espeak_SetSynthCallback.restype = None
    lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
    lib.espeak_SetVoiceByName.restype = ctypes.c_int
    lib.espeak_SetParameter.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int]
    lib.espeak_SetParameter.restype = ctypes.c_int
    lib.espeak_Synth.argtypes = [
        ctypes.c_char_p,  # text
        ctypes.c_size_t,  # its size in bytes, with the terminating NUL
        ctypes.c_uint,  # position
        ctypes.c_int,  # position type
        ctypes.c_uint,  # end position (0: none)
        ctypes.c_uint,  # flags
        ctypes.c_void_p,  # unique identifier (out)
        ctypes.c_void_p,  # user data
    ]
    lib.espeak_Synth.restype = ctypes.c_int
    lib.espeak_TextToPhonemes.argtypes = [ctypes.POINTER(ctypes.c_void_p), ctypes.c_int, ctypes.c_int]
    lib.espeak_TextToPhonemes.restype = ctypes.c_char_p
    lib.espeak_ng_SetRandSeed.argtypes = [ctypes.c_long]
    lib.espeak_ng_SetRandSeed.restype = None


def _engine() -> _Engine:
    """The process's initialised library (call with `_LOCK` held)."""
    global _ENGINE
    if _ENGINE is None:
        lib, data_path = _load_library()
        _declare(lib)
        rate = lib.espeak_Initialize(
            _AUDIO_OUTPUT_SYNCHRONOUS, 0, data_path.encode() if data_path else None, 0
        )
        if rate != SAMPLE_RATE:
            raise EspeakError(f"espeak_Initialize failed (returned {rate}; data path {data_path})")
        chunks: list[np.ndarray] = []

        def collect(wav, count, _events) -> int:
            if wav and count > 0:
                chunks.append(np.ctypeslib.as_array(wav, shape=(count,)).copy())
            return 0  # 0: go on synthesising

        callback = _SYNTH_CALLBACK(collect)
        lib.espeak_SetSynthCallback(callback)
        _ENGINE = _Engine(lib, callback, chunks)
    return _ENGINE


def _set_voice(engine: _Engine, voice: str) -> None:
    if engine.voice != voice:
        status = engine.lib.espeak_SetVoiceByName(voice.encode())
        if status != 0:
            raise EspeakError(f"eSpeak NG has no voice {voice!r} (espeak_SetVoiceByName returned {status})")
        engine.voice = voice


def synthesize(
    text: str, voice: str, rate_wpm: int = 175, pitch: int = 50, pitch_range: int = 50, seed: int = 0
) -> tuple[np.ndarray, int]:
    """(float32 mono waveform in [-1, 1], 22050) of `text` spoken by `voice` ("en", "en+f3") at
    `rate_wpm` words per minute, with base `pitch` and `pitch_range` on eSpeak's 0-100 scales.

    eSpeak's noise generator (breathy voices) is seeded with `seed` first: the library seeds it from
    the clock. The audio still depends a little on what the process synthesised before (the phase
    of eSpeak's pitch flutter and its gain control carry over, and no call resets them): the same
    sequence of calls in a fresh process gives the same audio."""
    data = text.encode("utf-8")
    with _LOCK:
        engine = _engine()
        _set_voice(engine, voice)
        engine.lib.espeak_ng_SetRandSeed(seed)
        for parameter, value in (
            (_ESPEAK_RATE, rate_wpm),
            (_ESPEAK_PITCH, pitch),
            (_ESPEAK_RANGE, pitch_range),
        ):
            engine.lib.espeak_SetParameter(parameter, int(value), 0)
        engine.chunks.clear()
        status = engine.lib.espeak_Synth(
            data, len(data) + 1, 0, _POS_CHARACTER, 0, _ESPEAK_CHARS_UTF8, None, None
        )
        chunks = list(engine.chunks)
        engine.chunks.clear()
    if status != 0:
        raise EspeakError(f"espeak_Synth failed with status {status} for {voice!r}: {text[:60]!r}")
    samples = np.concatenate(chunks) if chunks else np.zeros(0, np.int16)
    return samples.astype(np.float32) / 32768.0, SAMPLE_RATE


def phonemize_raw(text: str, voice: str) -> str:
    """eSpeak NG's IPA for `text`, clauses joined by two spaces: phones separated by one space, words
    by two, with stress marks and any language switch such as "(en)" as eSpeak writes them."""
    with _LOCK:
        engine = _engine()
        _set_voice(engine, voice)
        buffer = ctypes.create_string_buffer(text.encode("utf-8"))
        pointer = ctypes.c_void_p(ctypes.addressof(buffer))
        clauses = []
        while pointer.value:  # each call reads one clause and moves the pointer on (NULL at the end)
            result = engine.lib.espeak_TextToPhonemes(
                ctypes.byref(pointer), _ESPEAK_CHARS_UTF8, _IPA_SPACE_SEPARATED
            )
            if result:
                clauses.append(result.decode("utf-8"))
    return "  ".join(clauses)


def phonemize(text: str, voice: str) -> list[str]:
    """The phones eSpeak NG speaks for `text` as a flat list (word boundaries dropped): IPA with stress
    marks removed and length marks kept on their phone. Raises `EspeakError` when eSpeak switches to
    another language for part of the text (its "(en)" markers): those phones are not `voice`'s."""
    raw = phonemize_raw(text, voice)
    if "(" in raw:
        raise EspeakError(f"{voice!r} switches language in {text[:60]!r}: {raw[:80]!r}")
    return clean_phones(raw)


def clean_phones(raw: str) -> list[str]:
    """Phones of a raw phonemisation: stress marks dropped, and the few eSpeak phoneme-name characters
    that leak into its IPA (digits, '.', '^', '"', '-') removed; a token left with only modifier
    letters or combining marks (Tamil's lone 'ʲ', a lone 'ː') joins the phone before it."""
    phones: list[str] = []
    for token in raw.translate(_STRESS_MARKS).split():
        phone = "".join(ch for ch in token if unicodedata.category(ch)[0] in "LM")
        if not phone:
            continue
        if all(unicodedata.category(ch) in ("Lm", "Mn", "Mc") for ch in phone):
            if phones:
                phones[-1] += phone
            continue
        phones.append(phone)
    return phones
