from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from rtcore.asr.batcher import BatchPolicy
from rtcore.cli import main as cli_main
from rtcore.runtime.config import ConfigError, Settings, load_settings


def test_defaults_hold_the_seed_values() -> None:
    s = load_settings(environ={})
    assert (s.vad_threshold, s.sample_rate, s.chunk_size, s.silence_chunks_context) == (0.5, 16000, 512, 2)
    assert s.ring_seconds >= 60 and s.ring_capacity >= 60 * 16000 and s.ring_capacity % 512 == 0


def test_precedence_of_the_four_layers(tmp_path: Path) -> None:
    cfg = tmp_path / "rtcore.yaml"
    cfg.write_text("asr_batch_size: 4\nasr_beam_size: 3\nrtp_port: 41000\nlog_level: WARNING\n")
    env = {"RTCORE_ASR_BATCH_SIZE": "12", "RTCORE_ASR_BEAM_SIZE": "2"}
    s = load_settings(config_file=cfg, environ=env, cli={"asr_batch_size": "16"})
    assert s.asr_batch_size == 16   # CLI beats env and file
    assert s.asr_beam_size == 2     # env beats file
    assert s.rtp_port == 41000      # file beats default
    assert s.log_level == "WARNING"
    assert s.asr_workers == 2       # default


def test_config_file_from_environment_and_toml(tmp_path: Path) -> None:
    cfg = tmp_path / "rtcore.toml"
    cfg.write_text('ari_url = "http://pbx:8088/ari/"\nmax_calls = 10\n')
    s = load_settings(environ={"RTCORE_CONFIG": str(cfg)})
    assert s.ari_url == "http://pbx:8088/ari" and s.max_calls == 10


@pytest.mark.parametrize("layer", ["file", "env", "cli"])
def test_invalid_value_names_the_field_and_its_origin(tmp_path: Path, layer: str) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text("asr_beam_size: 0\n" if layer == "file" else "{}\n")
    env = {"RTCORE_ASR_BEAM_SIZE": "0"} if layer == "env" else {}
    cli = {"asr_beam_size": "0"} if layer == "cli" else {}
    with pytest.raises(ConfigError) as info:
        load_settings(config_file=cfg, environ=env, cli=cli)
    origin = {"file": f"config file {cfg}", "env": "environment RTCORE_ASR_BEAM_SIZE",
              "cli": "command line --asr-beam-size"}[layer]
    assert str(info.value) == ("invalid configuration:\n  asr_beam_size: Input should be greater than or equal to 1 "
                               f"(got {0 if layer == 'file' else repr('0')} from {origin})")


def test_every_bad_field_is_reported_at_once() -> None:
    with pytest.raises(ConfigError) as info:
        load_settings(environ={"RTCORE_VAD_THRESHOLD": "1.5", "RTCORE_SAMPLE_RATE": "8000",
                               "RTCORE_REDIS_URL": "localhost:6379", "RTCORE_ASR_DEVICE": "tpu"})
    text = str(info.value)
    for field in ("vad_threshold", "sample_rate", "redis_url", "asr_device"):
        assert f"\n  {field}: " in text


def test_unknown_names_are_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="RTCORE_ASR_BACTH_SIZE: no such setting"):
        load_settings(environ={"RTCORE_ASR_BACTH_SIZE": "8"})
    cfg = tmp_path / "c.yaml"
    cfg.write_text("max_cals: 3\n")
    with pytest.raises(ConfigError, match=r"max_cals: no such setting \(from config file"):
        load_settings(config_file=cfg, environ={})


def test_unreadable_or_malformed_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="No such file or directory"):
        load_settings(config_file=tmp_path / "missing.yaml", environ={})
    bad = tmp_path / "bad.yaml"
    bad.write_text("asr_batch_size: [1,\n")
    with pytest.raises(ConfigError, match="cannot parse"):
        load_settings(config_file=bad, environ={})
    listy = tmp_path / "list.yaml"
    listy.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="top level must be a mapping"):
        load_settings(config_file=listy, environ={})


def test_passwords_never_appear_in_output_or_errors(capsys: pytest.CaptureFixture[str]) -> None:
    s = load_settings(environ={"RTCORE_ARI_PASSWORD": "s3cret-pw"})
    assert s.ari_password.get_secret_value() == "s3cret-pw"
    assert "s3cret-pw" not in repr(s) and "s3cret-pw" not in str(s)
    assert "s3cret-pw" not in json.dumps(s.redacted())
    # The child handshake is the one place the secret travels, and it round-trips.
    assert Settings.from_child_json(s.to_child_json()).ari_password.get_secret_value() == "s3cret-pw"
    with pytest.raises(ConfigError) as info:
        load_settings(environ={"RTCORE_ARI_PASSWORD": "s3cret-pw", "RTCORE_MAX_CALLS": "0"})
    assert "s3cret-pw" not in str(info.value)
    assert cli_main(["config", "--ari-password", "s3cret-pw"]) == 0
    assert "s3cret-pw" not in capsys.readouterr().out


def test_cli_rejects_bad_flag_with_the_field_named() -> None:
    proc = subprocess.run([sys.executable, "-m", "rtcore.cli", "launch", "--max-calls", "many"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert "max_calls: Input should be a valid integer" in proc.stderr
    assert "--max-calls" in proc.stderr


def test_the_batch_policys_defaults_are_the_settings() -> None:
    assert BatchPolicy.from_settings(Settings()) == BatchPolicy()


def test_the_ari_password_can_come_from_a_file(tmp_path: Path) -> None:
    secret = tmp_path / "ari-password"
    secret.write_text("s3cret-from-file\n")
    s = load_settings(environ={"RTCORE_ARI_PASSWORD_FILE": str(secret)})
    assert s.ari_password.get_secret_value() == "s3cret-from-file"
    assert "s3cret" not in json.dumps(s.redacted())
    with pytest.raises(ConfigError, match="set either it or ari_password, not both"):
        load_settings(environ={"RTCORE_ARI_PASSWORD_FILE": str(secret), "RTCORE_ARI_PASSWORD": "x"})
    with pytest.raises(ConfigError, match=r"ari_password_file: cannot read .*nope.*No such file"):
        load_settings(environ={}, cli={"ari_password_file": str(tmp_path / "nope")})
    (tmp_path / "blank").write_text("\n")
    with pytest.raises(ConfigError, match="is empty"):
        load_settings(environ={}, cli={"ari_password_file": str(tmp_path / "blank")})
