"""Getting a simulation ready before `rtcore launch` starts its processes: rendered prompts (their
durations pace the simulated playbacks) and the calibrated phrasebook. Both are cached."""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import numpy.typing as npt

from rtcore.config import Settings

log = logging.getLogger(__name__)


def prepare_simulation(settings: Settings) -> dict[str, int]:
    from rtcore.asr import transcribe_offline
    from rtcore.batcher import BatchPolicy
    from rtcore.callers.phrasebook import build_phrasebook
    from rtcore.dialog.script import load_script
    from rtcore.intents import default_classifier
    from rtcore.models import whisper_model_dir
    from rtcore.prompts import build_prompts
    from rtcore.whisper import WhisperEngine, WhisperOptions

    rendered = build_prompts(load_script(settings.dialog_script or None), settings.prompts_path, settings.tts_command)
    engine: list[WhisperEngine] = []  # loaded only if something needs calibrating
    classifier = default_classifier()

    def recognize(audios: list[npt.NDArray[np.float32]]) -> list[str]:
        if not engine:
            engine.append(WhisperEngine(WhisperOptions.from_settings(settings, whisper_model_dir(settings))))
        log.info("calibrating %d caller phrase variants with the shipped ASR and classifier", len(audios))
        results = transcribe_offline(engine[0], BatchPolicy.from_settings(settings),
                                     [(str(i), a) for i, a in enumerate(audios)], language=settings.asr_language)
        return ["" if results[str(i)].hallucination else results[str(i)].text for i in range(len(audios))]

    def classify(text: str, state: str) -> tuple[str, dict[str, Any]]:
        result = classifier.classify(text, state)
        return result.intent, dict(result.slots)

    book = build_phrasebook(settings.model_cache_path / "phrasebook", recognize, classify)
    return {"prompts": len(rendered), "phrase_variants": sum(len(c) for c in book.values()),
            "answers_usable": sum(1 for c in book.values() if c)}
