"""`rtcore bench understanding`: how many callers end with the right lead, over a phone line.

Three measures, for each ASR context setting (and each model directory given), in one run:
- scripted calls: `rtcore launch` with the embedded PBX, callers in the telephone band
  (`caller_codec`), the scenarios in turn; the share of calls whose lead is exactly the one their
  caller's answers should give (outcome and every slot), per scenario;
- answers: every phrasebook variant (calibrated or not) through the telephone band, cut by the VAD,
  transcribed in batches as live and classified: intent accuracy, and intent + slots accuracy;
- real speech: WER of the shared French recordings (../shared/audio/fr) through the telephone band.
Writes understanding.json and understanding.md. Figures only: never a test.
"""

from __future__ import annotations

import json
import logging
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from rtcore.runtime.config import Settings

log = logging.getLogger(__name__)

DEFAULT_SCENARIOS = ("happy", "tenant", "refusal", "faq_mid_flow", "hesitant", "barge_in")
WER_FILES = ("OSR_fr_000_0041_8k", "leopard_test_fr", "cheetah_test_fr")
LEAD_FIELDS = ("zip_code", "owner", "heating", "callback", "slot")


def lead_matches(lead: Any, intended: dict[str, Any]) -> bool:
    """The lead is exactly the intended one: outcome and every slot (a callback slot by day and period)."""
    from rtcore.sim.callers.phrasebook import slot_matches

    if lead is None or lead.outcome != intended["outcome"]:
        return False
    for name in LEAD_FIELDS:
        wanted, found = intended.get(name), getattr(lead, name)
        if wanted is None:
            if found is not None:
                return False
        elif not slot_matches(found, wanted):
            return False
    return True


def scripted_calls(settings: Settings, scenarios: tuple[str, ...], per_scenario: int, concurrency: int,
                   ) -> dict[str, Any]:
    """One `rtcore launch` of len(scenarios) x per_scenario calls; exact leads per scenario."""
    import redis

    from rtcore.dialog.leads import read_leads
    from rtcore.launch.launcher import run_launch
    from rtcore.runtime.redis_server import PrivateRedis
    from rtcore.sim.callers.prepare import SIM_CALLS_FILE, read_expectations

    with tempfile.TemporaryDirectory(prefix="rt-und-", dir="/tmp") as tmp:
        run = settings.model_copy(update={
            "data_dir": str(Path(tmp) / "data"), "run_dir": str(Path(tmp) / "run"),
            "sim_scenarios": ",".join(scenarios), "metrics_port": 0, "http_port": 0})
        t0 = time.monotonic()
        report = run_launch(run, calls=concurrency, total_calls=per_scenario * len(scenarios))
        elapsed = time.monotonic() - t0
        expectations = read_expectations(run.data_path / SIM_CALLS_FILE)
        with PrivateRedis(Path(tmp) / "run2", run.data_path / "redis") as server:
            client = redis.Redis.from_url(server.url)
            leads = {lead.call_id: lead for lead in read_leads(client)}
            client.close()
    per: dict[str, dict[str, Any]] = {}
    refused = 0
    for call_id, record in expectations.items():
        if record.get("refused"):
            refused += 1  # not taken (admission control): says nothing of understanding
            continue
        row = per.setdefault(record["scenario"], {"calls": 0, "exact": 0, "misses": []})
        row["calls"] += 1
        lead = leads.get(call_id)
        if lead_matches(lead, record["intended"]):
            row["exact"] += 1
        elif len(row["misses"]) < 5:
            row["misses"].append({"intended": record["intended"], "said": record["answers"], "typed": record["typed"],
                                  "got": None if lead is None else {"outcome": lead.outcome,
                                                                    **{f: getattr(lead, f) for f in LEAD_FIELDS}},
                                  "turns": [] if lead is None else [(t.source, t.transcript, t.intent)
                                                                   for t in lead.turns]})
    for row in per.values():
        row["share"] = round(row["exact"] / row["calls"], 3) if row["calls"] else 0.0
    total = sum(r["calls"] for r in per.values())
    return {"scenarios": dict(sorted(per.items())), "calls": total, "refused": refused,
            "exact_share": round(sum(r["exact"] for r in per.values()) / total, 3) if total else 0.0,
            "eos_to_reply_ms": report["latency_ms"]["eos_to_reply"], "seconds": round(elapsed, 1)}


def _segment(settings: Settings, audios: list[npt.NDArray[np.float32]]) -> list[list[Any]]:
    from rtcore.vad.segmenter import SegmenterOptions, segment_streams
    from rtcore.vad.silero import BatchedVad, SileroVad

    return segment_streams(audios, SegmenterOptions.from_settings(settings),
                           BatchedVad(SileroVad(), capacity=max(1, len(audios))))


def _engine(settings: Settings) -> Any:
    from rtcore.asr.whisper import WhisperEngine, WhisperOptions
    from rtcore.runtime.models import whisper_model_dir

    return WhisperEngine(WhisperOptions.from_settings(settings, whisper_model_dir(settings)))


def answer_accuracy(settings: Settings, engine: Any) -> dict[str, Any]:
    """Every synthesized phrasebook variant through the phone line, cut and transcribed as live
    (batched, with its state's context when the engine has context_tokens), then classified."""
    import soundfile

    from rtcore.asr.batcher import BatchPolicy
    from rtcore.asr.worker import transcribe_offline
    from rtcore.dialog.script import load_script
    from rtcore.intents import default_classifier
    from rtcore.sim.callers.phrasebook import ANSWERS_BY_KEY, slot_matches
    from rtcore.sim.callers.prepare import calibration
    from rtcore.sim.telephony import telephone_band_float

    script = load_script(settings.dialog_script or None)
    book_dir = settings.model_cache_path / "phrasebook"
    manifest = json.loads((book_dir / f"manifest-{calibration(settings).name}.json").read_text())
    variants = [(ANSWERS_BY_KEY[e["answer"]], book_dir / e["file"]) for e in manifest.values()
                if e["answer"] in ANSWERS_BY_KEY and (book_dir / e["file"]).is_file()]
    before, after = np.zeros(9600, np.float32), np.zeros(16000, np.float32)
    audios = [np.concatenate([before, telephone_band_float(soundfile.read(str(p), dtype="float32")[0],
                                                            settings.sim_caller_codec), after]) for _, p in variants]
    spans = _segment(settings, audios)
    items = [(f"{i}:{j}", audios[i][u.start:u.end]) for i, us in enumerate(spans) for j, u in enumerate(us)]
    contexts = {f"{i}:{j}": script.states[variants[i][0].state].asr_context
                for i, us in enumerate(spans) for j in range(len(us))}
    t0 = time.perf_counter()
    results = transcribe_offline(engine, BatchPolicy.from_settings(settings), items, language=settings.asr_language,
                                 contexts=contexts)
    asr_s = time.perf_counter() - t0
    classifier = default_classifier()
    intents = slots = 0
    for i, (answer, _) in enumerate(variants):
        text = " ".join(results[f"{i}:{j}"].text for j in range(len(spans[i])) if not results[f"{i}:{j}"].hallucination)
        result = classifier.classify(text, answer.state)
        ok = result.intent == answer.intent
        intents += ok
        slots += ok and all(slot_matches(result.slots.get(k), v) for k, v in answer.slots)
    n = len(variants)
    return {"answers": n, "intent_accuracy": round(intents / n, 3) if n else 0.0,
            "intent_and_slots_accuracy": round(slots / n, 3) if n else 0.0, "asr_seconds": round(asr_s, 1)}


def real_speech_wer(settings: Settings, engine: Any, audio_dir: Path, context: str) -> dict[str, Any] | None:
    """WER of the shared recordings through the phone line (None without ../shared/audio/fr)."""
    from rtcore.asr.batcher import BatchPolicy
    from rtcore.asr.evaluation import wer
    from rtcore.asr.worker import transcribe_offline
    from rtcore.runtime.audio import load_audio
    from rtcore.sim.telephony import telephone_band_float

    files = [audio_dir / f"{name}.wav" for name in WER_FILES]
    if not all(f.exists() for f in files):
        return None
    audios = [telephone_band_float(load_audio(f), settings.sim_caller_codec) for f in files]
    refs = [(audio_dir / "refs" / f"{name}.txt").read_text() for name in WER_FILES]
    spans = _segment(settings, audios)
    items = [(f"{i}:{j}", audios[i][u.start:u.end]) for i, us in enumerate(spans) for j, u in enumerate(us)]
    results = transcribe_offline(engine, BatchPolicy.from_settings(settings), items, language=settings.asr_language,
                                 contexts=dict.fromkeys((k for k, _ in items), context))
    hyps = [" ".join(results[f"{i}:{j}"].text for j in range(len(us)) if not results[f"{i}:{j}"].hallucination)
            for i, us in enumerate(spans)]
    return {"utterances": len(items), "wer": round(wer(refs, hyps), 3),
            "flagged": sum(1 for r in results.values() if r.hallucination)}


def pause_gaps(settings: Settings, audios: list[npt.NDArray[np.float32]]) -> list[float]:
    """Run each signal through the live VAD and segmenter, chunk by chunk as live, and return, for
    every utterance cut that speech follows, the seconds from the cut (UtteranceReady) to the next
    speech start (SpeechStarted): what the turn-continuation window has to cover."""
    from rtcore.vad.segmenter import Segmenter, SegmenterOptions, SpeechStart, Utterance
    from rtcore.vad.silero import CHUNK, BatchedVad, SileroVad

    vad = BatchedVad(SileroVad(), capacity=1)
    gaps: list[float] = []
    for n, audio in enumerate(audios):
        key = ("gaps", n)
        vad.add(key)
        segmenter = Segmenter(SegmenterOptions.from_settings(settings))
        cut_at: float | None = None
        for step in range(len(audio) // CHUNK):
            prob = float(vad.step([key], audio[None, step * CHUNK:(step + 1) * CHUNK])[0])
            now = (step + 1) * CHUNK / 16000  # when this chunk has been heard
            for event in segmenter.feed(step * CHUNK, prob):
                if isinstance(event, Utterance):
                    cut_at = now
                elif isinstance(event, SpeechStart) and cut_at is not None:
                    gaps.append(round(now - cut_at, 3))
                    cut_at = None
        vad.remove(key)
    return gaps


def turn_join_measure(settings: Settings, audio_dir: Path | None) -> dict[str, Any]:
    """Gaps after a cut inside hesitant answers (the phrasebook's " | " phrasings, phone band) against
    gaps between the sentences of read speech (../shared), for choosing `dialog_turn_join_s`."""
    import soundfile

    from rtcore.runtime.audio import load_audio
    from rtcore.sim.callers.phrasebook import ANSWERS, variant_files
    from rtcore.sim.telephony import telephone_band_float

    book_dir = settings.model_cache_path / "phrasebook"
    tail = np.zeros(16000, np.float32)
    files = [path for answer in ANSWERS if any("|" in p for p in answer.phrases)
             for path in variant_files(book_dir, answer) if path.is_file()]
    clips = [np.concatenate([telephone_band_float(soundfile.read(str(f), dtype="float32")[0],
                                                  settings.sim_caller_codec), tail]) for f in files]
    inside = pause_gaps(settings, clips)
    between: list[float] = []
    if audio_dir is not None:
        files = sorted(audio_dir.glob("OSR_fr_*.wav"))
        between = pause_gaps(settings, [telephone_band_float(load_audio(f), settings.sim_caller_codec) for f in files])
    window = settings.dialog_turn_join_s

    def share(values: list[float]) -> float:
        return round(sum(1 for v in values if v <= window) / len(values), 3) if values else 0.0

    return {"hesitant_clips": len(clips), "cut_inside": len(inside), "gaps_inside_s": sorted(inside),
            "joined_inside_share": share(inside), "gaps_between_sentences": len(between),
            "between_sentences_within_window_share": share(between), "window_s": window,
            "gaps_between_sentences_p10_p50": [round(float(np.percentile(between, q)), 3) for q in (10, 50)]
            if between else []}


def noise_and_speech(settings: Settings, engine: Any, audio_dir: Path | None, seed: int = 1) -> dict[str, Any]:
    """No-speech probability and mean log-probability of real speech (../shared, phone band) and
    of noise (white, pink, mains hum, babble at -50 to -20 dBFS, phone band), and what the filters
    make of each: how the thresholds were chosen."""
    from rtcore.asr.batcher import BatchPolicy
    from rtcore.asr.worker import transcribe_offline
    from rtcore.runtime.audio import load_audio
    from rtcore.sim.telephony import telephone_band_float

    if audio_dir is None:
        return {}
    files = [f for f in sorted(audio_dir.glob("*.wav")) if "_norm" not in f.name]
    audios = [telephone_band_float(load_audio(f), settings.sim_caller_codec) for f in files]
    speech = [a[u.start:u.end] for a, us in zip(audios, _segment(settings, audios), strict=True) for u in us]
    rng = np.random.default_rng(seed)
    noise = []
    n = 2 * 16000
    for level_db in (-50, -40, -30, -20):
        for kind in ("white", "pink", "hum", "babble"):
            if kind == "white":
                x = rng.standard_normal(n)
            elif kind == "pink":
                spectrum = np.fft.rfft(rng.standard_normal(n))
                x = np.fft.irfft(spectrum / np.maximum(1, np.arange(len(spectrum))) ** 0.5, n)
            elif kind == "hum":
                t = np.arange(n) / 16000
                x = np.sin(2 * np.pi * 50 * t) + 0.3 * np.sin(2 * np.pi * 150 * t)
            else:  # six voices at once, none intelligible
                x = np.zeros(n)
                for _ in range(6):
                    voice = speech[int(rng.integers(len(speech)))][:n]
                    x[:len(voice)] += voice * rng.uniform(0.3, 1.0)
            x = x / (np.sqrt(np.mean(x ** 2)) + 1e-9) * 10 ** (level_db / 20)
            noise.append(telephone_band_float(x.astype(np.float32), settings.sim_caller_codec))
    items = [(f"s{i}", a) for i, a in enumerate(speech)] + [(f"n{i}", a) for i, a in enumerate(noise)]
    results = transcribe_offline(engine, BatchPolicy.from_settings(settings), items, language=settings.asr_language)

    def summary(prefix: str) -> dict[str, Any]:
        rows = [r for k, r in results.items() if k.startswith(prefix)]
        return {"n": len(rows), "flagged": sum(r.hallucination for r in rows),
                "no_speech_max": round(max(r.no_speech_prob for r in rows), 3),
                "no_speech_min": round(min(r.no_speech_prob for r in rows), 3),
                "logprob_min": round(min(r.avg_logprob for r in rows), 2),
                "logprob_max": round(max(r.avg_logprob for r in rows), 2),
                "passed_as_text": sorted(r.text for r in rows if not r.hallucination)[:8] if prefix == "n" else []}

    return {"speech": summary("s"), "noise": summary("n")}


def run_understanding(settings: Settings, out: Path, *, scenarios: tuple[str, ...] = DEFAULT_SCENARIOS,
                      per_scenario: int = 10, concurrency: int = 4, context_tokens: tuple[int, ...] = (32, 0),
                      model_paths: tuple[str, ...] = ("",), calls: bool = True, audio_dir: Path | None = None,
                      ) -> dict[str, Any]:
    from rtcore.sim.callers.prepare import prepare_simulation

    out.mkdir(parents=True, exist_ok=True)
    prepare_simulation(settings)  # the prompts and the phrasebook (calibrated for the caller codec)
    rows: list[dict[str, Any]] = []
    result: dict[str, Any] = {"turn_join": turn_join_measure(settings, audio_dir), "rows": rows}
    for model_path in model_paths:
        for tokens in context_tokens:
            # The same callers for every setting: calibrated as the shipped settings would be.
            s = settings.model_copy(update={"asr_context_tokens": tokens, "asr_model_path": model_path,
                                            "sim_calibration_context_tokens": settings.asr_context_tokens})
            label = {"model": model_path or "whisper-base (PyPI)", "context_tokens": tokens,
                     "caller_codec": s.sim_caller_codec}
            log.warning("understanding: %s", label)
            engine = _engine(s)
            row: dict[str, Any] = {**label, "answers": answer_accuracy(s, engine)}
            if tokens == context_tokens[0] and model_path == model_paths[0]:
                result["filters"] = noise_and_speech(s, engine, audio_dir)
            if audio_dir is not None:
                # Read speech answers no question: it gets the first question's context, to show what a
                # context costs when the caller says something else.
                context = ""
                if tokens:
                    from rtcore.dialog.script import load_script

                    script = load_script(s.dialog_script or None)
                    context = script.states[script.start].asr_context
                row["real_speech"] = real_speech_wer(s, engine, audio_dir, context)
            del engine
            if calls:
                row["calls"] = scripted_calls(s, scenarios, per_scenario, concurrency)
            rows.append(row)
            (out / "understanding.json").write_text(json.dumps(result, indent=2, ensure_ascii=False) + "\n")
    (out / "understanding.md").write_text(markdown(result))
    return result


def markdown(result: dict[str, Any]) -> str:
    rows = result["rows"]
    lines = ["| model | context | codec | answers | intent acc. | intent+slots acc. | ASR s | real speech WER "
             "| exact leads |", "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        wer = r.get("real_speech") or {}
        calls = r.get("calls") or {}
        lines.append(f"| {r['model']} | {r['context_tokens'] or 'none'} | {r['caller_codec']} | "
                     f"{r['answers']['answers']} | "
                     f"{r['answers']['intent_accuracy']:.1%} | {r['answers']['intent_and_slots_accuracy']:.1%} | "
                     f"{r['answers']['asr_seconds']} | "
                     f"{format(wer['wer'], '.1%') if 'wer' in wer else '-'} | "
                     f"{format(calls['exact_share'], '.1%') + ' of ' + str(calls['calls']) if calls else '-'} |")
    scenario_names = sorted({name for r in rows for name in (r.get("calls") or {}).get("scenarios", {})})
    if scenario_names:
        lines += ["", "Exact leads per scenario (calls with exactly the lead their caller's answers give):", "",
                  "| model | context | " + " | ".join(scenario_names) + " |",
                  "|---|---|" + "---|" * len(scenario_names)]
        for r in rows:
            per = (r.get("calls") or {}).get("scenarios", {})
            cells = [f"{per[n]['exact']}/{per[n]['calls']}" if n in per else "-" for n in scenario_names]
            lines.append(f"| {r['model']} | {r['context_tokens'] or 'none'} | " + " | ".join(cells) + " |")
    join = result.get("turn_join")
    if join:
        gaps = join["gaps_inside_s"]
        lines += ["", f"Turn continuation (window {join['window_s']} s): {join['cut_inside']} of "
                  f"{join['hesitant_clips']} hesitant answers were cut at their pause; "
                  f"{join['joined_inside_share']:.0%} of those cuts are followed by speech within the window "
                  f"(gaps {min(gaps, default=0)}..{max(gaps, default=0)} s); between the sentences of read speech "
                  f"{join['between_sentences_within_window_share']:.0%} of {join['gaps_between_sentences']} gaps are "
                  f"(p10/p50 {join['gaps_between_sentences_p10_p50']} s)."]
    return "\n".join(lines) + "\n"
