"""ASR sweep: batch size x window x beam, with WER, against two reference configurations.

    python -m bench.asr [--batch 1,8,16] [--window 8,10,15] [--beam 1,5] [--threads N]

Utterances: the reference files of ../shared/audio/fr (OSR 0041, leopard, cheetah) cut by the
VAD, as `rtcore transcribe` does; WER is corpus-level against refs/. Reference rows, run in the
same invocation: seed-style (30 s window, beam 5, one utterance at a time) and WhisperLive-style
(30 s window, batch 8; its 50 ms collection window is moot offline, where every batch is full).
Utterances longer than window - margin go to a longer bucket (rtcore.asr.batcher), as live.
"""

from __future__ import annotations

import argparse
import itertools
import os
import time
from pathlib import Path

from rtcore.asr.batcher import BatchPolicy
from rtcore.asr.evaluation import wer
from rtcore.asr.whisper import WhisperEngine, WhisperOptions
from rtcore.asr.worker import transcribe_offline
from rtcore.runtime.audio import load_audio
from rtcore.runtime.config import Settings
from rtcore.runtime.models import whisper_model_dir
from rtcore.vad.segmenter import SegmenterOptions, segment_streams
from rtcore.vad.silero import BatchedVad, SileroVad

AUDIO = Path(__file__).resolve().parent.parent.parent / "shared" / "audio" / "fr"
FILES = ["OSR_fr_000_0041_8k", "leopard_test_fr", "cheetah_test_fr"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", default="1,8,16")
    parser.add_argument("--window", default="8,10,15")
    parser.add_argument("--beam", default="1,5")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--margin", type=float, default=Settings().asr_window_margin_s)
    args = parser.parse_args()
    if not AUDIO.exists():
        raise SystemExit(f"{AUDIO} is absent: this benchmark needs ../shared/audio/fr")
    settings = Settings()
    audios = [load_audio(AUDIO / f"{name}.wav") for name in FILES]
    refs = [(AUDIO / "refs" / f"{name}.txt").read_text() for name in FILES]
    segments = segment_streams(audios, SegmenterOptions.from_settings(settings), BatchedVad(SileroVad()))
    owners = [i for i, utts in enumerate(segments) for _ in utts]
    items = [(str(k), audios[i][u.start:u.end]) for k, (i, u) in
             enumerate((i, u) for i, utts in enumerate(segments) for u in utts)]
    engines: dict[int, WhisperEngine] = {}

    def run(label: str, batch: int, window: float, beam: int, margin: float) -> None:
        if beam not in engines:
            engines[beam] = WhisperEngine(WhisperOptions(model_dir=str(whisper_model_dir(settings)), beam_size=beam,
                                                         intra_threads=args.threads))
        policy = BatchPolicy(batch_size=batch, max_wait_s=0.0, window_s=window, margin_s=margin)
        t0 = time.perf_counter()
        results = transcribe_offline(engines[beam], policy, items)
        elapsed = time.perf_counter() - t0
        texts = [" ".join(results[str(k)].text for k, owner in enumerate(owners)
                          if owner == i and not results[str(k)].hallucination) for i in range(len(FILES))]
        print(f"| {label:<22} | {batch:>5} | {window:>6.0f} | {beam:>4} | {elapsed / len(items):>7.3f} | "
              f"{len(items) / elapsed:>7.2f} | {100 * wer(refs, texts):>5.1f} |", flush=True)

    print(f"{len(items)} utterances, Whisper base int8, {args.threads} threads, margin {args.margin:.0f} s\n")
    print("| configuration          | batch | window | beam |  s/utt |  utt/s | WER % |")
    print("|------------------------|-------|--------|------|--------|--------|-------|")
    run("seed-style", 1, 30.0, 5, 0.0)
    run("WhisperLive-style", 8, 30.0, 5, 0.0)
    for batch, window, beam in itertools.product(
        *(map(float, v.split(",")) for v in (args.batch, args.window, args.beam))
    ):
        default = (int(batch), window, int(beam)) == (
            settings.asr_batch_size,
            settings.asr_window_s,
            settings.asr_beam_size,
        )
        run("rtcore (default)" if default else "rtcore", int(batch), window, int(beam), args.margin)


if __name__ == "__main__":
    main()
