"""A voice-like test signal made without any recording: additive harmonic synthesis.

Demo clips need audio that an audio model (and a listener) would take for speech rather than a
sine tone, and whose prosody follows the clip's sentiment, without downloading anything. The
signal is a glottal source (harmonics of an f0 contour falling off at -6 dB/octave) shaped by
three vowel formants that move from syllable to syllable, cut into syllables of about 0.25 s
with short pauses between phrases and a consonant-like noise burst at some syllable onsets.

Valence drives the prosody the way it does in speech: positive speech is higher and ends
rising, negative speech is lower and falls; arousal (|valence|) widens the pitch range and
raises the loudness. Everything is vectorised numpy; the only Python loop runs over harmonics.
"""

from __future__ import annotations

import numpy as np

SYNTH_RATE = 16000
"""Harmonics are summed at this rate (speech has little energy above 5 kHz) and then resampled."""

MAX_HARMONIC_HZ = 5000.0
CONTROL_HOP = 32
SYLLABLE_SECONDS = 0.25
PAUSE_CHANCE = 0.18
VOWEL_FORMANTS = np.array(
    [
        [730.0, 1090.0, 2440.0],  # a
        [270.0, 2290.0, 3010.0],  # i
        [300.0, 870.0, 2240.0],  # u
        [530.0, 1840.0, 2480.0],  # e
        [570.0, 840.0, 2410.0],  # o
        [660.0, 1720.0, 2410.0],  # ae
    ]
)
FORMANT_BANDWIDTHS = np.array([90.0, 110.0, 170.0])


def synth_voice(duration: float, sample_rate: int, valence: float, rng: np.random.Generator) -> np.ndarray:
    """Return `round(duration * sample_rate)` mono float32 samples in [-1, 1] of voice-like sound.

    `valence` is the clip's label divided by its scale's maximum, so it lies in [-1, 1] for any
    dataset. Leading and trailing silence keep the signal's ends quiet, so clips can be placed
    back to back in a longer recording without clicks.
    """
    if duration <= 0 or sample_rate <= 0:
        raise ValueError(f"synth_voice needs a positive duration and sample rate, got {duration}, {sample_rate}")
    valence = float(np.clip(valence, -1.0, 1.0))
    count = max(1, round(duration * SYNTH_RATE))
    t = np.arange(count) / SYNTH_RATE
    onsets, lengths = _syllables(duration, rng)
    f0 = _pitch_contour(t, onsets + lengths / 2, duration, valence, rng)
    formants = _formant_tracks(t, onsets + lengths / 2, rng)
    envelope, since_onset = _syllable_envelope(t, onsets, lengths, rng)
    voiced = _harmonics(f0, formants) * envelope
    signal = voiced / (np.max(np.abs(voiced)) or 1.0) + _consonant_noise(since_onset, envelope, rng)
    loudness = 0.45 + 0.4 * abs(valence)
    signal = signal * (loudness / (np.max(np.abs(signal)) or 1.0))
    return np.clip(_resample(signal, round(duration * sample_rate)), -1.0, 1.0).astype(np.float32)


def _syllables(duration: float, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Onsets and lengths of syllables (~4 per second), with phrase pauses, inside the clip.

    The clip keeps 40-150 ms of silence at its start and 50 ms at its end; a clip too short for
    one full syllable gets a single one filling its middle.
    """
    lead = rng.uniform(0.04, 0.15)
    budget = duration - lead - 0.05
    count = int(duration / SYLLABLE_SECONDS) + 2
    lengths = rng.gamma(8.0, SYLLABLE_SECONDS / 8.0, count)
    gaps = np.where(rng.random(count) < PAUSE_CHANCE, rng.uniform(0.12, 0.35, count), rng.uniform(0.01, 0.04, count))
    onsets = lead + np.concatenate(([0.0], np.cumsum(lengths + gaps)[:-1]))
    fits = onsets + lengths <= lead + budget
    if not fits.any():
        return np.array([0.1 * duration]), np.array([0.8 * duration])
    return onsets[fits], lengths[fits]


def _pitch_contour(
    t: np.ndarray, centres: np.ndarray, duration: float, valence: float, rng: np.random.Generator
) -> np.ndarray:
    """f0 in Hz: speaker's base pitch, valence-dependent level, declination and per-syllable accents."""
    arousal = abs(valence)
    base = rng.uniform(95.0, 210.0) * 2 ** ((2.0 * valence + 1.5 * arousal) / 12)
    spread = 1.0 + 2.5 * arousal + 0.8 * max(valence, 0.0)
    accents = np.interp(t, centres, rng.normal(0.0, spread, centres.size)) if centres.size > 1 else 0.0
    declination = (3.0 * valence - 2.0) * (t / duration - 0.5)
    vibrato = 0.15 * np.sin(2 * np.pi * rng.uniform(4.5, 6.0) * t + rng.uniform(0, 2 * np.pi))
    return base * 2 ** ((accents + declination + vibrato) / 12)


def _formant_tracks(t: np.ndarray, centres: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Formant frequencies (3, samples) gliding between a random vowel per syllable."""
    vowels = VOWEL_FORMANTS[rng.integers(0, len(VOWEL_FORMANTS), centres.size)]
    vowels = vowels * rng.uniform(0.95, 1.12)
    return np.stack([np.interp(t, centres, vowels[:, k]) for k in range(3)])


def _syllable_envelope(
    t: np.ndarray, onsets: np.ndarray, lengths: np.ndarray, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Amplitude envelope (zero in pauses) and the time since the onset of a consonant syllable.

    About 60% of syllables start with a consonant; elsewhere the time is infinite, so the
    consonant burst that decays with it is silent there.
    """
    index = np.clip(np.searchsorted(onsets, t, side="right") - 1, 0, onsets.size - 1)
    since_onset = t - onsets[index]
    position = since_onset / lengths[index]
    inside = (position >= 0) & (position < 1)
    stress = rng.uniform(0.55, 1.0, onsets.size)[index]
    consonant = (rng.random(onsets.size) < 0.6)[index]
    shape = np.sin(np.pi * np.clip(position, 0.0, 1.0)) ** 0.6
    return np.where(inside, stress * shape, 0.0), np.where(inside & consonant, since_onset, np.inf)


def _harmonics(f0: np.ndarray, formants: np.ndarray) -> np.ndarray:
    """Sum of harmonics of f0, each weighted by source tilt and the cascade formant response.

    The weights change slowly, so they are computed every CONTROL_HOP samples and interpolated;
    only the sines run at the full rate.
    """
    phase = 2 * np.pi * np.cumsum(f0) / SYNTH_RATE
    positions = np.arange(f0.size)
    control = positions[::CONTROL_HOP]
    squared_formants = formants[:, control] ** 2
    damping = FORMANT_BANDWIDTHS[:, None] ** 2
    highest = int(min(MAX_HARMONIC_HZ, 0.45 * SYNTH_RATE) / f0.min())
    total = np.zeros_like(f0)
    for k in range(1, highest + 1):
        freq_sq = (k * f0[control]) ** 2
        response = np.prod(squared_formants / np.sqrt((squared_formants - freq_sq) ** 2 + freq_sq * damping), axis=0)
        total += np.interp(positions, control, response / k) * np.sin(k * phase)
    return total


def _consonant_noise(since_onset: np.ndarray, envelope: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Short high-passed noise bursts at consonant onsets plus faint breath noise while voicing."""
    noise = np.diff(rng.normal(0.0, 1.0, since_onset.size + 1))
    burst = np.where(since_onset < 0.06, np.exp(-since_onset / 0.015), 0.0)
    return noise * (0.08 * burst + 0.01 * envelope)


def _resample(signal: np.ndarray, count: int) -> np.ndarray:
    """Band-limited resampling by zero-padding or truncating the spectrum (the ends are silent)."""
    if count == signal.size:
        return signal
    spectrum = np.fft.rfft(signal)
    padded = np.zeros(count // 2 + 1, dtype=complex)
    keep = min(spectrum.size, padded.size)
    padded[:keep] = spectrum[:keep]
    return np.fft.irfft(padded, count) * (count / signal.size)
