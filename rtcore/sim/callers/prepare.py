"""Getting a simulation ready before `rtcore launch` starts its processes: the prompts installed in the
embedded PBX's sounds directory (`sim_sounds_path`, laid out as `rtcore prompts install` lays out a real
Asterisk's, so the simulator finds and times them as Asterisk would) and the calibrated phrasebook.
Both are cached."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from rtcore.runtime.config import Settings
from rtcore.sim.callers.phrasebook import Calibration

log = logging.getLogger(__name__)

SIM_CALLS_FILE = "sim-calls.jsonl"  # in data_dir: every simulated call's scenario and intended lead


class CallExpectations:
    """Appends each finished simulated call (scenario, what was said, the lead it should give) to
    a JSON-lines file, which the launch report and the understanding benchmark read."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def write(self, record: dict[str, Any]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a", encoding="utf-8") as f:
            f.write(json.dumps(record, ensure_ascii=False) + "\n")


def read_expectations(path: Path) -> dict[str, dict[str, Any]]:
    """call id -> its record, from a CallExpectations file (absent: none)."""
    if not path.exists():
        return {}
    records = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    return {r["call_id"]: r for r in records}


def calibration(settings: Settings) -> Calibration:
    """The conditions the simulated callers' phrasebook is calibrated for."""
    tokens = settings.sim_calibration_context_tokens
    return Calibration(codec=settings.sim_caller_codec,
                       context_tokens=settings.asr_context_tokens if tokens < 0 else tokens, judge=_classifier_print())


def _classifier_print() -> str:
    """The embedded classifier's code and examples: calibration verdicts hold only for them."""
    import rtcore.intents

    digest = hashlib.sha256()
    for path in sorted(Path(rtcore.intents.__file__).parent.glob("*.*")):
        if path.suffix in (".py", ".yaml"):
            digest.update(path.read_bytes())
    return digest.hexdigest()[:12]


def prepare_simulation(settings: Settings) -> dict[str, int]:
    from rtcore.asr.batcher import BatchPolicy
    from rtcore.asr.whisper import WhisperEngine, WhisperOptions
    from rtcore.asr.worker import transcribe_offline
    from rtcore.dialog.prompts import install_prompts
    from rtcore.dialog.script import load_script
    from rtcore.intents import default_classifier
    from rtcore.runtime.models import whisper_model_dir
    from rtcore.sim.callers.phrasebook import build_phrasebook
    from rtcore.sim.telephony import telephone_band_float

    script = load_script(settings.dialog_script or None)
    installed = install_prompts(script, settings.sim_sounds_path, settings.prompts_path, settings.tts_command)
    for warning in installed.warnings:
        log.warning("%s", warning)
    engine: list[WhisperEngine] = []  # loaded only if something needs calibrating
    classifier = default_classifier()

    def recognize(audios: list[npt.NDArray[np.float32]], states: list[str], hearing: int) -> list[str]:
        """As on a call: the clip through the phone line (sim_caller_codec), between silences, cut
        by the live VAD and segmenter, each utterance transcribed by the batcher with the context
        of the state it answers; texts joined, as the dialog joins a turn cut at a pause. A later
        `hearing` starts the speech half a VAD chunk later, pads it to the next window up and
        batches it with other utterances, as a live call may."""
        from rtcore.vad.segmenter import SegmenterOptions, segment_streams
        from rtcore.vad.silero import BatchedVad, SileroVad

        if not engine:
            options = WhisperOptions.from_settings(settings, whisper_model_dir(settings))
            options = dataclasses.replace(options, context_tokens=calibration(settings).context_tokens)
            engine.append(WhisperEngine(options))
        log.info("calibrating %d caller phrase variants with the shipped VAD, ASR and classifier (hearing %d)",
                 len(audios), hearing + 1)
        before, after = np.zeros(9600 + 256 * hearing, np.float32), np.zeros(16000, np.float32)
        policy = BatchPolicy.from_settings(settings)
        policy = dataclasses.replace(policy, margin_s=policy.margin_s + hearing * policy.step_s)
        padded = [np.concatenate([before, telephone_band_float(a, settings.sim_caller_codec), after]) for a in audios]
        spans = segment_streams(padded, SegmenterOptions.from_settings(settings),
                                BatchedVad(SileroVad(), capacity=len(padded)))
        items = [(f"{i}:{j}", padded[i][u.start:u.end]) for i, us in enumerate(spans) for j, u in enumerate(us)]
        if hearing % 2:
            items.reverse()  # other batch neighbours
        contexts = {f"{i}:{j}": script.states[states[i]].asr_context if states[i] in script.states else ""
                    for i, us in enumerate(spans) for j in range(len(us))}
        results = transcribe_offline(engine[0], policy, items,
                                     language=settings.asr_language, contexts=contexts)
        return [" ".join(results[f"{i}:{j}"].text for j in range(len(us)) if not results[f"{i}:{j}"].hallucination)
                for i, us in enumerate(spans)]

    def classify(text: str, state: str) -> tuple[str, dict[str, Any]]:
        result = classifier.classify(text, state)
        return result.intent, dict(result.slots)

    book = build_phrasebook(settings.model_cache_path / "phrasebook", recognize, classify, calibration(settings))
    return {"prompts": len(installed.rendered), "phrase_variants": sum(len(c) for c in book.values()),
            "answers_usable": sum(1 for c in book.values() if c)}
