"""Silero VAD (ONNX) over many audio streams in one inference per step.

Silero is a small LSTM: each stream carries a state of shape [2, 128] and needs the last 64
samples of its previous chunk prepended to the next 512 (without that context Silero silently
returns near-zero probabilities). `BatchedVad` keeps every stream's state and context in rows of
two arrays, gathers the rows of the streams that have a chunk this step into one batch, runs the
model once, and scatters the new state back. Streams join and leave between steps.
"""

from __future__ import annotations

import logging
from collections.abc import Hashable
from pathlib import Path

import numpy as np
import numpy.typing as npt

from rtcore.runtime.models import silero_onnx_path

log = logging.getLogger(__name__)

SAMPLE_RATE = 16000
CHUNK = 512  # samples per step at 16 kHz: 32 ms
CONTEXT = 64  # samples of the previous chunk Silero expects in front of each chunk
STATE_SIZE = 128


class SileroVad:
    """The ONNX model, loaded once per process. Input chunks are float32 in [-1, 1)."""

    def __init__(self, path: Path | None = None, threads: int = 1) -> None:
        try:
            import onnxruntime as ort
        except ImportError as exc:  # pragma: no cover - a dependency of rtcore
            raise RuntimeError("onnxruntime is not installed (pip install onnxruntime)") from exc
        opts = ort.SessionOptions()
        # One thread: the VAD is one process on one core; more threads cost more than they give
        # at these batch sizes, and the ASR workers need the other cores.
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        self.path = path or silero_onnx_path()
        self._session = ort.InferenceSession(str(self.path), sess_options=opts, providers=["CPUExecutionProvider"])
        self._sr = np.array(SAMPLE_RATE, dtype=np.int64)

    def run(self, frames: npt.NDArray[np.float32], state: npt.NDArray[np.float32]
            ) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float32]]:
        """frames [B, 64+512] (context + chunk), state [2, B, 128] -> (probabilities [B], new state)."""
        if frames.ndim != 2 or frames.shape[1] != CONTEXT + CHUNK:
            raise ValueError(f"frames must be [B, {CONTEXT + CHUNK}], got {list(frames.shape)}")
        if state.shape != (2, frames.shape[0], STATE_SIZE):
            raise ValueError(f"state must be [2, {frames.shape[0]}, {STATE_SIZE}], got {list(state.shape)}")
        out, new_state = self._session.run(None, {
            "input": np.ascontiguousarray(frames, dtype=np.float32),
            "state": np.ascontiguousarray(state, dtype=np.float32),
            "sr": self._sr,
        })
        return out[:, 0], new_state


class BatchedVad:
    """Per-stream Silero state for any number of streams; one inference per `step`."""

    def __init__(self, model: SileroVad, capacity: int = 64) -> None:
        self.model = model
        self._state = np.zeros((2, capacity, STATE_SIZE), dtype=np.float32)
        self._context = np.zeros((capacity, CONTEXT), dtype=np.float32)
        self._rows: dict[Hashable, int] = {}
        self._free: list[int] = list(range(capacity - 1, -1, -1))
        self.steps = 0
        self.chunks = 0

    def __contains__(self, key: Hashable) -> bool:
        return key in self._rows

    def __len__(self) -> int:
        return len(self._rows)

    def add(self, key: Hashable) -> None:
        """A new stream with fresh state (a no-op if it already exists)."""
        if key in self._rows:
            return
        if not self._free:
            self._grow()
        row = self._free.pop()
        self._state[:, row] = 0.0
        self._context[row] = 0.0
        self._rows[key] = row

    def remove(self, key: Hashable) -> None:
        row = self._rows.pop(key, None)
        if row is not None:
            self._free.append(row)

    def _grow(self) -> None:
        old = self._state.shape[1]
        new = old * 2
        state = np.zeros((2, new, STATE_SIZE), dtype=np.float32)
        state[:, :old] = self._state
        context = np.zeros((new, CONTEXT), dtype=np.float32)
        context[:old] = self._context
        self._state, self._context = state, context
        self._free.extend(range(new - 1, old - 1, -1))

    def step(self, keys: list[Hashable], chunks: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
        """Speech probability of one 512-sample chunk for each stream in `keys` (chunks [B, 512])."""
        if chunks.shape != (len(keys), CHUNK):
            raise ValueError(f"chunks must be [{len(keys)}, {CHUNK}], got {list(chunks.shape)}")
        if not keys:
            return np.zeros(0, dtype=np.float32)
        rows = np.fromiter((self._rows[k] for k in keys), dtype=np.intp, count=len(keys))
        frames = np.empty((len(keys), CONTEXT + CHUNK), dtype=np.float32)
        frames[:, :CONTEXT] = self._context[rows]
        frames[:, CONTEXT:] = chunks
        probs, new_state = self.model.run(frames, self._state[:, rows])
        self._state[:, rows] = new_state
        self._context[rows] = chunks[:, -CONTEXT:]
        self.steps += 1
        self.chunks += len(keys)
        return probs
