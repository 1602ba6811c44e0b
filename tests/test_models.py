from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from rtcore.runtime import models
from rtcore.runtime.config import Settings
from rtcore.runtime.models import ModelError, assemble_whisper_base, silero_onnx_path, whisper_model_dir
from tests.conftest import require_shared_audio


@pytest.fixture(scope="module")
def base_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return assemble_whisper_base(tmp_path_factory.mktemp("models"))


def test_assembled_model_is_complete_and_verified(base_dir: Path) -> None:
    assert (base_dir / "model.bin").stat().st_size == models.WHISPER_BASE_SIZE
    assert models._sha256(base_dir / "model.bin") == models.WHISPER_BASE_SHA256
    for name in models.WHISPER_BASE_SIDE_FILES:
        assert (base_dir / name).is_file()
    # A second call reuses it without rewriting.
    mtime = (base_dir / "model.bin").stat().st_mtime_ns
    assert assemble_whisper_base(base_dir.parent, verify=True) == base_dir
    assert (base_dir / "model.bin").stat().st_mtime_ns == mtime


def test_whisper_base_transcribes_real_french(base_dir: Path) -> None:
    from faster_whisper import WhisperModel
    from faster_whisper.audio import decode_audio

    audio = decode_audio(str(require_shared_audio("cheetah_test_fr.wav")), sampling_rate=16000)
    model = WhisperModel(str(base_dir), device="cpu", compute_type="int8", cpu_threads=2)
    segments, info = model.transcribe(audio, language="fr", beam_size=5, vad_filter=False)
    text = " ".join(s.text for s in segments).lower()
    assert "mer" in text, text


def test_damaged_assembly_is_rebuilt(base_dir: Path, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    shutil.copytree(base_dir, cache / models.WHISPER_BASE_NAME)
    with open(cache / models.WHISPER_BASE_NAME / "model.bin", "r+b") as f:
        f.truncate(1000)  # an interrupted copy
    rebuilt = assemble_whisper_base(cache)
    assert (rebuilt / "model.bin").stat().st_size == models.WHISPER_BASE_SIZE


def test_same_size_but_corrupt_assembly_is_caught_by_verify(base_dir: Path, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    shutil.copytree(base_dir, cache / models.WHISPER_BASE_NAME)
    with open(cache / models.WHISPER_BASE_NAME / "model.bin", "r+b") as f:
        f.seek(5_000_000)
        f.write(b"\x00" * 64)
    assert models._sha256(assemble_whisper_base(cache, verify=True) / "model.bin") == models.WHISPER_BASE_SHA256


def test_corrupt_package_parts_give_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real = {pkg: models._package_dir(pkg, pkg) for pkg, _ in models.WHISPER_BASE_PARTS}
    fake: dict[str, Path] = {}
    for pkg, _part in models.WHISPER_BASE_PARTS:
        data = tmp_path / pkg / "data"
        data.mkdir(parents=True)
        for f in (real[pkg] / "data").iterdir():
            (data / f.name).symlink_to(f)
        fake[pkg] = tmp_path / pkg
    second_pkg, second_part = models.WHISPER_BASE_PARTS[1]
    broken = fake[second_pkg] / "data" / second_part
    broken.unlink()
    broken.write_bytes(b"\x00" * 1024)  # a damaged install
    monkeypatch.setattr(models, "_package_dir", lambda pkg, pip_name: fake[pkg])
    with pytest.raises(ModelError, match="assembled Whisper base model.bin is corrupt: 72609790 bytes"):
        assemble_whisper_base(tmp_path / "cache")
    assert not (tmp_path / "cache" / models.WHISPER_BASE_NAME).exists()  # nothing half-built left


def test_missing_package_says_what_to_install(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(models, "WHISPER_BASE_PARTS", (("no_such_pkg_part1", "model.bin.part1"),))
    with pytest.raises(ModelError, match=r"'no-such-pkg-part1' is not installed \(pip install no-such-pkg-part1\)"):
        assemble_whisper_base(tmp_path)


def test_configured_model_path_takes_precedence(base_dir: Path, tmp_path: Path) -> None:
    other = tmp_path / "large-v3"
    shutil.copytree(base_dir, other)
    assert whisper_model_dir(Settings(asr_model_path=str(other), model_cache_dir=str(tmp_path / "c"))) == other
    assert not (tmp_path / "c").exists()  # the base model was not assembled
    (other / "model.bin").unlink()
    with pytest.raises(ModelError, match="is not a CTranslate2 Whisper model: missing model.bin"):
        whisper_model_dir(Settings(asr_model_path=str(other)))
    with pytest.raises(ModelError, match="does not exist"):
        whisper_model_dir(Settings(asr_model_path=str(tmp_path / "nowhere")))


def test_silero_onnx_runs_with_its_documented_inputs() -> None:
    import onnxruntime as ort

    path = silero_onnx_path()
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["input", "state", "sr"]
    batch = 3
    out, state = session.run(None, {"input": np.zeros((batch, 64 + 512), np.float32),
                                    "state": np.zeros((2, batch, 128), np.float32),
                                    "sr": np.array(16000, np.int64)})
    assert out.shape == (batch, 1) and state.shape == (2, batch, 128)
    assert float(out.max()) < 0.5  # silence is not speech
