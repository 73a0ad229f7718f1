"""One name per spoken language: every importer maps its corpus's names to a canonical BCP-47 tag.

Corpora name one language in many ways: MLS says ``german`` (and ``polish_opus`` for its opus release),
Common Voice and VoxPopuli ``de``, FLEURS ``de_de``, BABEL a pack number, VoxLingua107 the deprecated
``iw`` and ``jw``. Streams stay per (corpus, language), but a language must have one name, or the
language-ID probe counts ``de`` and ``german`` as two classes and the tables split one language in two.

The canonical tag is the shortest tag that still names the spoken language:

- the language subtag only, as ``langcodes`` standardises it (ISO 639-1 where it exists, else
  ISO 639-3; deprecated codes replaced: ``iw`` -> ``he``, ``jw`` -> ``jv``, ``in`` -> ``id``); an
  individual language of a macrolanguage becomes the macrolanguage when that is its usual name
  (``cmn`` -> ``zh``, ``swh`` -> ``sw``, ``arb`` -> ``ar``);
- scripts and regions are dropped (``sv-SE`` -> ``sv``, ``pt-BR`` -> ``pt``, ``cmn_hans_cn`` -> ``zh``),
  except where a corpus uses a region for a different spoken variety: Common Voice's ``zh-HK`` is
  Cantonese (``yue``), not Mandarin (``REGIONAL_VARIETIES``);
- variants that are distinct spoken varieties stay (Common Voice's ``rm-sursilv`` and ``rm-vallader``
  are two Romansh idioms);
- English names are looked up, exactly (``german`` -> ``de``, ``tok pisin`` -> ``tpi``).

A name that is none of these (a made-up corpus's ``l000``) is kept as given and reported, so the user
can map it. ``--language-map FILE`` (two tab-separated columns: the corpus's name, the tag) overrides
anything above. The corpus's own name is kept in every sample's metadata as ``source_language``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import langcodes

# A corpus name (lower case, '_' read as '-') whose region names another spoken language than the
# language subtag alone would.
REGIONAL_VARIETIES = {
    "zh-hk": "yue",  # Common Voice: Cantonese as spoken in Hong Kong
}
# Release suffixes that are not part of the language name (MLS's opus release: mls_polish_opus).
RELEASE_SUFFIXES = ("_opus", "-opus")


@dataclass
class LanguageNames:
    """Maps corpus names to canonical tags, with the user's overrides, and remembers what it did."""

    overrides: dict[str, str] = field(default_factory=dict)
    mapped: dict[str, str] = field(default_factory=dict)  # corpus name -> tag, where they differ
    unknown: set[str] = field(default_factory=set)  # kept as given: not a language name or tag

    def canonical(self, name: str) -> str:
        """The canonical tag of a corpus's language name (see the module docstring)."""
        if name in self.overrides:
            tag = self.overrides[name]
        else:
            found = canonical_tag(name)
            if found is None:
                self.unknown.add(name)
                return name
            tag = found
        if tag != name:
            self.mapped[name] = tag
        return tag

    def report(self) -> list[str]:
        """One line per kind of mapping done, for the shard summary."""
        lines = []
        if self.mapped:
            pairs = ", ".join(f"{name}->{tag}" for name, tag in sorted(self.mapped.items()))
            lines.append(f"language names mapped to BCP-47 tags: {pairs}")
        if self.unknown:
            names = ", ".join(sorted(self.unknown))
            lines.append(
                f"kept as given (not a language tag or name): {names}; map them with --language-map FILE"
            )
        return lines


@lru_cache(maxsize=4096)
def canonical_tag(name: str) -> str | None:
    """The canonical tag for ``name``, or None when it names no language langcodes knows."""
    text = name.strip().lower()
    for suffix in RELEASE_SUFFIXES:
        text = text.removesuffix(suffix)
    text = text.replace("_", "-")
    if text in REGIONAL_VARIETIES:
        return REGIONAL_VARIETIES[text]
    language = _parse_tag(text) or _parse_name(text)
    if language is None:
        return None
    variants = [v for v in (language.variants or []) if v]
    return "-".join([language.language, *variants])


def _parse_tag(text: str) -> langcodes.Language | None:
    try:
        language = langcodes.Language.get(langcodes.standardize_tag(text, macro=True))
    except (ValueError, LookupError):
        return None
    return language if language.language and language.is_valid() else None


def _parse_name(text: str) -> langcodes.Language | None:
    """A language's English name, exactly (`german`, `tok pisin`): langcodes' own lookup is fuzzy
    and would turn folder names such as `male` or `short` into Malay or Shor."""
    name = text.replace("-", " ")
    try:
        found = langcodes.find(name)
    except LookupError:
        return None
    if found.display_name("en").lower() != name:
        return None
    return langcodes.Language.get(langcodes.standardize_tag(found.to_tag(), macro=True))


def read_language_map(path: str | os.PathLike) -> dict[str, str]:
    """``--language-map FILE``: lines ``<corpus name><TAB><tag>``; blank lines and ``#`` comments
    are ignored. The tag is used as given (it becomes a directory name, so it is checked there)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"language map not found: {path}")
    mapping: dict[str, str] = {}
    for line_no, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        fields = [f.strip() for f in line.split("\t")]
        if len(fields) != 2 or not all(fields):
            raise ValueError(
                f"{path}:{line_no}: expected two tab-separated fields (corpus name, language tag), "
                f"got {line!r}"
            )
        mapping[fields[0]] = fields[1]
    return mapping
