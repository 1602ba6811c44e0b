from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from rtcore.asr.batcher import BatchPolicy
from rtcore.asr.evaluation import wer
from rtcore.asr.whisper import WhisperEngine, WhisperOptions
from rtcore.asr.worker import transcribe_offline
from rtcore.runtime.audio import load_audio
from rtcore.runtime.config import Settings
from rtcore.runtime.models import whisper_model_dir
from rtcore.vad.segmenter import SegmenterOptions, segment_streams
from rtcore.vad.silero import BatchedVad, SileroVad
from tests.conftest import AUDIO_FR, REPO, require_shared_audio

REF_FILES = ["OSR_fr_000_0041_8k", "leopard_test_fr", "cheetah_test_fr"]


@pytest.fixture(scope="module")
def engine() -> WhisperEngine:
    settings = Settings()
    return WhisperEngine(WhisperOptions.from_settings(settings, whisper_model_dir(settings)))


@pytest.fixture(scope="module")
def utterances() -> list[tuple[int, np.ndarray]]:
    audios = [load_audio(require_shared_audio(f"{name}.wav")) for name in REF_FILES]
    segments = segment_streams(audios, SegmenterOptions.from_settings(Settings()), BatchedVad(SileroVad()))
    return [(i, audios[i][u.start:u.end]) for i, utts in enumerate(segments) for u in utts]


def file_texts(results: dict[str, object], utterances: list[tuple[int, np.ndarray]]) -> list[str]:
    texts: list[list[str]] = [[] for _ in REF_FILES]
    for k, (i, _) in enumerate(utterances):
        result = results[str(k)]
        if not result.hallucination:  # type: ignore[attr-defined]
            texts[i].append(result.text)  # type: ignore[attr-defined]
    return [" ".join(t) for t in texts]


def test_default_configuration_is_as_accurate_as_the_full_window(engine: WhisperEngine, utterances) -> None:  # type: ignore[no-untyped-def]
    refs = [(AUDIO_FR / "refs" / f"{name}.txt").read_text() for name in REF_FILES]
    items = [(str(k), audio) for k, (_, audio) in enumerate(utterances)]
    default = transcribe_offline(engine, BatchPolicy.from_settings(Settings()), items)
    # The seed's way: the full 30 s window (3000 frames), beam 5, one utterance at a time.
    full = transcribe_offline(engine, BatchPolicy(batch_size=1, window_s=30.0, margin_s=0.0), items)
    wer_default, wer_full = wer(refs, file_texts(default, utterances)), wer(refs, file_texts(full, utterances))
    print(f"WER default {wer_default:.3f}, full window {wer_full:.3f}, {len(items)} utterances")
    assert wer_full < 0.5  # the reference itself is sane
    assert wer_default <= wer_full + 0.02


def test_an_utterance_in_a_batch_gives_the_same_text_as_alone(engine: WhisperEngine, utterances) -> None:  # type: ignore[no-untyped-def]
    audios = [audio for _, audio in utterances[:8]]
    batched, timing = engine.transcribe(audios, 10.0)
    assert timing.batch_size == 8
    for audio, in_batch in zip(audios, batched, strict=True):
        [alone], _ = engine.transcribe([audio], 10.0)
        assert in_batch.text == alone.text
    assert all(r.text for r in batched)


def test_silence_and_noise_are_flagged_not_passed_as_speech(engine: WhisperEngine) -> None:
    rng = np.random.default_rng(0)
    silence = np.zeros(16000 * 2, np.float32)
    hiss = (rng.standard_normal(16000 * 2) * 0.01).astype(np.float32)
    results, _ = engine.transcribe([silence, hiss], 10.0)
    for r in results:
        assert r.hallucination or r.text == "", r


def test_language_is_forced_and_unknown_codes_rejected(engine: WhisperEngine) -> None:
    audio = load_audio(require_shared_audio("cheetah_test_fr.wav"))
    [fr], _ = engine.transcribe([audio], 10.0, ["fr"])
    assert "mer" in fr.text.lower()
    with pytest.raises(ValueError, match="unknown language 'xx'"):
        engine.transcribe([audio], 10.0, ["xx"])


def test_audio_longer_than_the_largest_window_is_split_not_truncated(engine: WhisperEngine) -> None:
    cheetah = load_audio(require_shared_audio("cheetah_test_fr.wav"))
    gap = np.zeros(16000 * 28, np.float32)
    [result], timing = engine.transcribe([np.concatenate([cheetah, gap, cheetah])], 30.0)
    assert timing.batch_size == 2  # two 30 s pieces
    assert result.text.lower().count("mer") == 2


def test_transcribe_command_json(tmp_path) -> None:  # type: ignore[no-untyped-def]
    cheetah = require_shared_audio("cheetah_test_fr.wav")
    leopard = require_shared_audio("leopard_test_fr.wav")
    proc = subprocess.run([sys.executable, "-m", "rtcore.cli", "transcribe", "--json", str(cheetah), str(leopard)],
                          capture_output=True, text=True, cwd=REPO, timeout=600)
    assert proc.returncode == 0, proc.stderr
    first, second = (json.loads(line) for line in proc.stdout.splitlines())
    assert first["file"] == str(cheetah) and "mer" in first["text"].lower()
    assert len(first["utterances"]) == 1 and set(first["utterances"][0]) == {"start", "end", "text"}
    assert first["utterances"][0]["text"] == first["text"]
    assert second["file"] == str(leopard) and "conservateur" in second["text"].lower()


def test_a_context_becomes_the_previous_text_of_the_decoder_at_a_fixed_length(engine: WhisperEngine) -> None:
    tokenizer = engine.tokenizer
    plain = engine.prompt_for("fr")
    with_context = engine.prompt_for("fr", "Au gaz, au fioul, à l'électricité, au bois.")
    short = engine.prompt_for("fr", "Oui.")
    long = engine.prompt_for("fr", " ".join(["Lundi, mardi, mercredi, jeudi, vendredi, samedi."] * 5))
    size = engine.options.context_tokens
    for prompt in (with_context, short, long):
        assert prompt[0] == tokenizer.sot_prev and prompt[-len(plain):] == plain
        assert len(prompt) == 1 + size + len(plain)  # the transcript starts at the same place in a batch
    assert tokenizer.decode(with_context[1:1 + size]).count("gaz") >= 1


def test_items_with_and_without_context_are_transcribed_in_one_call(engine: WhisperEngine) -> None:
    """CTranslate2 refuses prompts of different lengths in one generate: they are decoded apart."""
    from rtcore.sim.telephony import telephone_band_float

    audio = telephone_band_float(load_audio(require_shared_audio("cheetah_test_fr.wav"))[:16000 * 4], "ulaw")
    results, timing = engine.transcribe([audio, audio], 10.0, contexts=["", "Les deux autres sont situés."])
    assert timing.batch_size == 2 and all(r.text for r in results)
