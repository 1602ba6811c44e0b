from __future__ import annotations

import numpy as np
import pytest

from rtcore.runtime.audio import load_audio
from rtcore.vad.silero import CHUNK, BatchedVad, SileroVad
from tests.conftest import require_shared_audio


@pytest.fixture(scope="module")
def model() -> SileroVad:
    return SileroVad()


@pytest.fixture(scope="module")
def speech() -> np.ndarray:
    return load_audio(require_shared_audio("OSR_fr_000_0041_8k.wav"))


def alone(model: SileroVad, signal: np.ndarray, n_chunks: int) -> np.ndarray:
    vad = BatchedVad(model, capacity=1)
    vad.add("only")
    return np.array([vad.step(["only"], signal[i * CHUNK:(i + 1) * CHUNK][None])[0] for i in range(n_chunks)])


def test_batched_equals_one_stream_at_a_time_while_calls_join_and_leave(model: SileroVad, speech: np.ndarray) -> None:
    # Five calls on different parts of the recording; each joins and leaves at its own tick.
    schedule = {"a": (0, 400), "b": (7, 300), "c": (30, 420), "d": (31, 90), "e": (150, 500)}
    offsets = {"a": 0, "b": 16000 * 11, "c": 16000 * 23, "d": 16000 * 40, "e": 16000 * 5}
    signals = {k: speech[offsets[k]:] for k in schedule}
    expected = {k: alone(model, signals[k], leave - join) for k, (join, leave) in schedule.items()}

    vad = BatchedVad(model, capacity=2)  # forces the row arrays to grow as calls join
    got: dict[str, list[float]] = {k: [] for k in schedule}
    batch_sizes = []
    for tick in range(500):
        for k, (join, leave) in schedule.items():
            if tick == join:
                vad.add(k)
            if tick == leave:
                vad.remove(k)
        keys = [k for k in schedule if k in vad]
        if not keys:
            continue
        chunks = np.stack([signals[k][(tick - schedule[k][0]) * CHUNK:(tick - schedule[k][0] + 1) * CHUNK]
                           for k in keys])
        for k, p in zip(keys, vad.step(keys, chunks), strict=True):
            got[k].append(float(p))
        batch_sizes.append(len(keys))
    assert max(batch_sizes) == 4
    for k in schedule:
        np.testing.assert_allclose(got[k], expected[k], atol=1e-4, err_msg=k)
        assert max(got[k]) > 0.9  # real speech in every stream: the comparison is not of zeros


def test_a_rejoining_call_starts_from_fresh_state(model: SileroVad, speech: np.ndarray) -> None:
    vad = BatchedVad(model, capacity=1)
    vad.add("x")
    for i in range(50):
        vad.step(["x"], speech[i * CHUNK:(i + 1) * CHUNK][None])
    vad.remove("x")
    vad.add("x")
    second = [float(vad.step(["x"], speech[i * CHUNK:(i + 1) * CHUNK][None])[0]) for i in range(60)]
    np.testing.assert_allclose(second, alone(model, speech, 60), atol=1e-4)


def test_bad_shapes_are_rejected(model: SileroVad) -> None:
    vad = BatchedVad(model)
    vad.add("a")
    with pytest.raises(ValueError, match=r"chunks must be \[1, 512\], got \[1, 256\]"):
        vad.step(["a"], np.zeros((1, 256), np.float32))
    with pytest.raises(ValueError, match=r"frames must be \[B, 576\]"):
        model.run(np.zeros((1, 512), np.float32), np.zeros((2, 1, 128), np.float32))
