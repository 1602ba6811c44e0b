"""One settings object for every process, layered: defaults < config file < RTCORE_* env < CLI flags.

The supervisor resolves the settings once and hands the resolved object to each child on its
stdin, so every process of one run sees exactly the same values.
"""

from __future__ import annotations

import ipaddress
import json
import os
import socket
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal
from urllib.parse import parse_qs, urlsplit

import yaml
from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator, model_validator

ENV_PREFIX = "RTCORE_"
# Environment variables with this prefix that are not settings themselves.
ENV_CONFIG_FILE = ENV_PREFIX + "CONFIG"


class ConfigError(ValueError):
    """Bad configuration: the message names every offending field and where its value came from."""


# --- Redis URLs and Sentinel lists (read here by the validators, and by rtcore.runtime.redis_client) ---
def redis_url_credentials(url: str) -> tuple[str, str]:
    """The (username, password) a Redis URL carries inline (redis://user:pw@host, or ?password=),
    empty strings when none."""
    parts = urlsplit(url)
    query = parse_qs(parts.query)
    username = parts.username or query.get("username", [""])[0]
    password = parts.password or query.get("password", [""])[0]
    return username, password


def mask_redis_url(url: str) -> str:
    """The URL with any inline password replaced by ***, for logs and messages (a lone
    redis://SECRET@host is masked whole: it may be a password)."""
    parts = urlsplit(url)
    netloc = parts.netloc
    if "@" in netloc:
        userinfo, host = netloc.rsplit("@", 1)
        user, colon, _password = userinfo.partition(":")
        netloc = f"{user}:***@{host}" if colon else f"***@{host}"
    query = parts.query
    if query:
        pairs = [pair.split("=", 1) for pair in query.split("&")]
        query = "&".join(f"{p[0]}=***" if p[0] == "password" and len(p) == 2 else "=".join(p) for p in pairs)
    # Rebuilt by hand: urlunsplit drops the empty authority of unix:///path.
    return (f"{parts.scheme}://{netloc}{parts.path}" + (f"?{query}" if query else "")
            + (f"#{parts.fragment}" if parts.fragment else ""))


def parse_sentinels(text: str) -> list[tuple[str, int]]:
    """'host:port,host:port' (an IPv6 address in brackets: [::1]:26379) as [(host, port)];
    ValueError naming the bad item."""
    addresses = []
    for item in (part.strip() for part in text.split(",")):
        if not item:
            continue
        host, sep, port = item.rpartition(":")
        host = host.strip("[]") if host.startswith("[") else host
        if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(f"{item!r} is not host:port (e.g. 10.0.0.7:26379, [fd00::7]:26379)")
        addresses.append((host, int(port)))
    return addresses


class Settings(BaseModel):
    """Every setting of rtcore. Field names are the config-file keys; `RTCORE_<NAME>` sets one from
    the environment and `--<name-with-dashes>` from the command line."""

    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True)

    # --- run ---------------------------------------------------------------------------------
    instance: str = Field("default", pattern=r"^[A-Za-z0-9_-]{1,32}$",
                          description="Name of this deployment; two instances on one host never touch each other's "
                                      "resources.")
    run_dir: str = Field("", description="Sockets, pid file and private Redis socket. Empty: "
                                         "$XDG_RUNTIME_DIR/rtcore/<instance> or /tmp/rtcore-<uid>/<instance>.")
    data_dir: str = Field("", description="Persistent data (private Redis append-only file, recordings). Empty: "
                                          "~/.local/share/rtcore/<instance>.")
    model_cache_dir: str = Field("", description="Where the Whisper model is assembled. Empty: ~/.cache/rtcore/models.")
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    log_format: Literal["text", "json"] = "text"

    # --- capacity and shared memory -----------------------------------------------------------
    max_calls: int = Field(64, ge=1, le=4096, description="Call slots in shared memory = most concurrent calls.")
    ring_seconds: float = Field(60.0, ge=1.0, le=3600.0, description="Audio kept per call slot, in seconds.")

    # --- seed fields (names kept from the seed) -----------------------------------------------
    rtp_ip: str = Field("127.0.0.1", description="Address the RTP capture binds (Asterisk's external_host).")
    rtp_port: int = Field(40000, ge=1, le=65535, description="UDP port of the RTP capture (one port for all calls, "
                                                             "demultiplexed by source).")
    whisper_url: str = Field("", description="An external seed-style Whisper HTTP service; empty: rtcore's own ASR.")
    whisper_timeout: float = Field(30.0, gt=0, description="Seconds before a request to whisper_url is abandoned.")
    vad_threshold: float = Field(0.5, ge=0.0, le=1.0, description="Silero speech probability at or above which a chunk "
                                                                  "is speech.")
    sample_rate: Literal[16000] = Field(16000, description="Audio sample rate; slin16 and Silero both fix it at 16 "
                                                           "kHz.")
    chunk_size: Literal[512] = Field(512, description="VAD chunk in samples (32 ms); Silero at 16 kHz accepts only "
                                                      "512.")
    silence_threshold: int = Field(12, ge=1, le=200, description="Silent 32 ms chunks that end an utterance (seed: 2; "
                                                                 "12 measured best, README).")
    max_buffer_size: int = Field(320000, ge=16000, le=480000, description="Samples after which an utterance is cut "
                                                                          "even mid-speech (seed: 32000 = 2 s, which "
                                                                          "split most sentences; now 20 s).")
    silence_chunks_context: int = Field(2, ge=0, le=50, description="Chunks of audio before speech onset prepended to "
                                                                    "an utterance.")

    # --- RTP capture and VAD (ours) -----------------------------------------------------------
    rtp_payload_type: int = Field(118, ge=0, le=127, description="RTP payload type of slin16 from Asterisk.")
    rtp_reorder_window: int = Field(5, ge=0, le=50, description="Packets held to reorder before a gap is declared lost "
                                                                "(x 20 ms of delay, only when reordering happens).")
    rtp_recv_buffer_bytes: int = Field(8 << 20, ge=65536, description="Kernel receive buffer of the RTP socket "
                                                                      "(SO_RCVBUF).")
    rtp_unknown_grace_s: float = Field(2.0, ge=0.0, le=30.0, description="Packets from a source no call has announced "
                                                                         "yet are held this long (RTP may beat "
                                                                         "CallStarted), then dropped.")
    vad_min_speech_ms: float = Field(250.0, ge=0.0, description="Utterances with less speech than this are dropped as "
                                                                "clicks.")
    vad_stall_timeout_s: float = Field(1.0, gt=0.0, description="A call whose audio stops arriving has its pending "
                                                                "utterance cut after this.")

    # --- ASR ----------------------------------------------------------------------------------
    asr_model_path: str = Field("", description="A CTranslate2 Whisper model directory; empty: Whisper base assembled "
                                                "from the PyPI packages.")
    asr_device: Literal["cpu", "cuda", "auto"] = "cpu"
    asr_compute_type: str = Field("int8", description="CTranslate2 compute type (int8, int8_float16, float16, float32, "
                                                      "default ...).")
    asr_batch_size: int = Field(4, ge=1, le=256, description="Most utterances per generate call (on one CPU thread, "
                                                             "2-4 decode about 20 % cheaper per utterance than 1; 8 "
                                                             "and more cost more).")
    asr_max_wait_ms: float = Field(10.0, ge=0.0, le=10000.0, description="How long a batch waits for more utterances "
                                                                         "after its first.")
    asr_window_s: float = Field(6.0, gt=0.0, le=30.0, description="The smallest encoder window in seconds (audio is "
                                                                  "padded to its bucket's window); longer utterances "
                                                                  "get a longer bucket.")
    asr_window_step_s: float = Field(2.0, gt=0.0, le=30.0, description="Window buckets run from asr_window_s up to 30 "
                                                                       "s in these steps.")
    asr_window_margin_s: float = Field(5.0, ge=0.0, le=25.0, description="Padding an utterance needs after it in its "
                                                                         "window: closer windows make Whisper loop "
                                                                         "(README).")
    asr_beam_size: int = Field(5, ge=1, le=16)
    asr_workers: int = Field(2, ge=1, le=64, description="ASR worker processes, each with its own model (on a CPU: "
                                                         "about one per core, with asr_intra_threads 1).")
    asr_language: str = Field("fr", min_length=2, max_length=3)
    asr_intra_threads: int = Field(1, ge=0, description="CTranslate2 threads per worker; 0: CTranslate2's default (all "
                                                        "cores). One thread per worker decodes faster than two threads "
                                                        "sharing a batch.")
    asr_inter_threads: int = Field(1, ge=1)
    asr_context_tokens: int = Field(32, ge=0, le=200,
                                    description="Whisper gets the dialog's expectation for the caller's answer (the "
                                                "script's asr_context) as this many tokens of previous text; 0: no "
                                                "context (README, \"Context\").")
    asr_endpoint: str = Field("", description="The ASR dispatcher's socket that workers connect to; empty: ipc:// in "
                                              "run_dir.")
    asr_worker_timeout_s: float = Field(10.0, gt=0, description="A worker silent this long is presumed dead: its "
                                                                "utterances go to another.")
    asr_queue_limit: int = Field(2000, ge=1, description="Utterances the ASR dispatcher queues at most; beyond, an "
                                                     "utterance gets an error transcript at once (admission control "
                                                     "keeps the queue far below this).")

    # --- cluster (several nodes over one Redis) --------------------------------------------------
    role: Literal["all", "media", "asr"] = Field(
        "all", description="all: the whole pipeline on this box; media: ARI control, RTP capture, VAD and dialog, "
                           "no Whisper (utterances go to the ASR nodes over Redis Streams); asr: ASR workers only, "
                           "reading the cluster's utterance stream. media and asr need redis_url (the shared Redis).")
    asr_transport: Literal["local", "stream"] = Field(
        "local", description="How a role-all node hands utterances to Whisper: local (its own dispatcher over ZeroMQ) "
                             "or stream (the cluster's Redis stream, shared with any ASR node). Roles media and asr "
                             "always use the stream.")
    node_id: str = Field("", pattern=r"^$|^[A-Za-z0-9_.-]{1,48}$",
                         description="This node's name in the cluster (unique per node); empty: <hostname>-<instance>.")
    cluster_name: str = Field("rtcore", pattern=r"^[A-Za-z0-9_.-]{1,32}$",
                              description="Prefix of the cluster's Redis keys and streams: nodes with the same name "
                                          "and Redis form one cluster.")
    stream_claim_idle_s: float = Field(5.0, ge=0.5, le=600.0,
                                       description="An utterance an ASR worker took and has not answered for this "
                                                   "long (its node died) is claimed by another worker (XAUTOCLAIM).")
    node_ttl_s: float = Field(5.0, ge=1.0, le=300.0, description="A node that stops refreshing its registration for "
                                                                 "this long is gone from `rtcore cluster status` and "
                                                                 "from the cluster's ASR capacity.")

    # --- ARI / Asterisk -----------------------------------------------------------------------
    ari_url: str = Field("", description="Asterisk ARI base URL, e.g. http://127.0.0.1:8088/ari; empty: the embedded "
                                         "simulator.")
    ari_user: str = "rtcore"
    ari_password: SecretStr = Field(SecretStr("rtcore"), description="Never logged; keep it off the command line: "
                                                                     "RTCORE_ARI_PASSWORD, the config file, or "
                                                                     "ari_password_file.")
    ari_password_file: str = Field("", description="A file whose first line is the ARI password (e.g. mode 600, or a "
                                                   "systemd credential); instead of ari_password.")
    ari_app: str = Field("rtcore", pattern=r"^[A-Za-z0-9_.-]+$",
                         description="The Stasis application this node registers; in a cluster (role media, or "
                                     "asr_transport stream) the default is rtcore-<node_id>, one per node, so that the "
                                     "dialplan chooses the node (README, \"Several nodes\").")
    ari_timeout: float = Field(5.0, gt=0)
    ari_wait: float = Field(0.0, ge=0.0, le=3600.0, description="Seconds `rtcore launch` keeps trying to reach an "
                                                                "Asterisk that is not answering yet (still starting); "
                                                                "a wrong URL or password stops it at once.")
    sim_ari_port: int = Field(8088, ge=1, le=65535, description="Port of the embedded ARI simulator (when ari_url is "
                                                                "empty).")
    sim_calls: int = Field(4, ge=0, le=1000, description="Simulated calls kept in progress by the embedded PBX (launch "
                                                         "--calls).")
    sim_total_calls: int = Field(0, ge=0, description="Stop placing calls after this many (launch --total-calls); 0: "
                                                      "no limit.")
    sim_duration_s: float = Field(0.0, ge=0.0, description="Stop placing calls after this long (launch --duration); 0: "
                                                           "no limit.")
    sim_caller_codec: Literal["ulaw", "alaw", "slin16"] = Field(
        "ulaw", description="How simulated callers reach the PBX: ulaw or alaw (8 kHz G.711 over the phone network, as "
                            "real callers: their voice is band-limited and companded), slin16 (a wide-band caller).")
    sim_calibration_context_tokens: int = Field(
        -1, ge=-1, le=200, description="The ASR context the simulated callers' phrasebook is calibrated with; -1: "
                                       "asr_context_tokens (a benchmark keeps the same callers while it varies that).")
    sim_scenarios: str = Field("", description="Comma-separated caller scenarios the embedded PBX picks from "
                                               "(happy, tenant, refusal, ...); empty: all, weighted.")
    sim_seed: int = Field(1, description="Seed of the simulated callers' choices (scenarios, numbers, pauses).")
    sim_audio_dir: str = Field("", description="Real French speech for callers' unclear turns; empty: "
                                               "../shared/audio/fr beside the checkout, if present.")

    # --- dialog ------------------------------------------------------------------------------
    dialog_script: str = Field("", description="The conversation (YAML); empty: the shipped rtcore/dialog/script.yaml.")
    dialog_setup_timeout_s: float = Field(5.0, gt=0.0, le=60.0, description="How long a call's snoop and externalMedia "
                                                                            "channels may take to enter the Stasis "
                                                                            "application (Asterisk adds them "
                                                                            "asynchronously) before its set-up fails.")
    dialog_turn_join_s: float = Field(
        1.2, ge=0.0, le=5.0, description="A caller who speaks again within this long after an utterance was cut is "
                                         "still answering: the two are one turn (README, \"Turn continuation\"); "
                                         "0: never join.")
    admission_refuse: Literal["continue", "busy"] = Field(
        "continue", description="A call that cannot be taken (max_calls reached, the ASR's expected wait over "
                                "admission_max_asr_wait_ms, or draining): continue: handed back to the dialplan "
                                "(ARI continue: it may route the call elsewhere); busy: answered with the busy "
                                "prompt, then hung up.")
    admission_max_asr_wait_ms: float = Field(1500.0, ge=0.0, description="A new call is refused while the ASR "
                                                                        "queue's expected wait exceeds this (ms); "
                                                                        "0: never on that ground.")
    drain_timeout_s: float = Field(60.0, ge=0.0, le=3600.0, description="On SIGTERM or `rtcore drain`: how long calls "
                                                                       "in progress may go on before the rest are "
                                                                       "ended politely.")
    dialog_barge_in: bool = Field(True, description="The caller may interrupt the bot (SpeechStarted stops the "
                                                    "prompt); false: ignored while the bot speaks, as the seed.")
    prompts_dir: str = Field("", description="Rendered prompts, .sln16/.ulaw/.alaw (rtcore prompts build; the cache of "
                                             "prompts install); empty: <data_dir>/prompts.")
    tts_command: str = Field("espeak-ng -v fr+f3 -s 150 --stdin -w {out}", description="Renders one prompt: French "
                                                                                       "text on stdin, a WAV written "
                                                                                       "to {out} (converted by sox to "
                                                                                       ".sln16, .ulaw and .alaw).")

    # --- Redis --------------------------------------------------------------------------------
    redis_url: str = Field("", description="redis://HOST:6379/0, rediss://HOST:6380/0 (TLS) or "
                                           "unix:///PATH.sock?db=0; the user and password go in redis_username and "
                                           "redis_password, not in the URL. Empty: a private redis-server started "
                                           "by `rtcore launch` (a single box only).")
    redis_username: str = Field("", description="Redis ACL user (AUTH username password); empty: the default user.")
    redis_password: SecretStr = Field(SecretStr(""), description="Redis password (requirepass or the ACL user's); "
                                                                 "never logged; or redis_password_file.")
    redis_password_file: str = Field("", description="A file whose first line is redis_password.")
    redis_tls_ca_file: str = Field("", description="CA bundle that signed the Redis server's certificate (rediss://); "
                                                   "empty: the system's.")
    redis_tls_cert_file: str = Field("", description="Client certificate for Redis mutual TLS (with "
                                                     "redis_tls_key_file).")
    redis_tls_key_file: str = Field("", description="Private key of redis_tls_cert_file.")
    redis_sentinels: str = Field("", description="Comma-separated host:port of Redis Sentinels; when set, the master "
                                                 "named redis_sentinel_master is found through them (fail-over "
                                                 "followed) instead of redis_url's host: redis_url then only gives "
                                                 "TLS (rediss://) and the database (/N). The Sentinels get the same "
                                                 "user, password and TLS options as the master.")
    redis_sentinel_master: str = Field("mymaster", description="The Sentinel master name of the shared Redis.")
    redis_call_ttl_s: float = Field(3600.0, ge=60.0, description="Per-call working keys (rtcore:call:<id>...) expire "
                                                                 "this long after the call's last change; leads never "
                                                                 "expire.")

    # --- intents ------------------------------------------------------------------------------
    intent_main_url: str = Field("", description="Seed-compatible intent API (main intents); empty: the embedded "
                                                 "classifier.")
    intent_faq_url: str = ""
    intent_timeout: float = Field(5.0, gt=0)

    # --- ports and bus ------------------------------------------------------------------------
    http_host: str = Field("127.0.0.1", description="Where the HTTP service (API, /health, the live view) listens. "
                                                    "It shows what callers said: an address beyond loopback needs "
                                                    "http_token.")
    http_token: SecretStr = Field(SecretStr(""), description="When set, every HTTP request must carry it "
                                                             "(Authorization: Bearer <token>, or as the password of "
                                                             "basic auth); required when http_host is not loopback. "
                                                             "Never logged; or http_token_file.")
    http_token_file: str = Field("", description="A file whose first line is http_token.")
    http_port: int = Field(8000, ge=0, le=65535)
    http_max_upload_mb: float = Field(25.0, gt=0, description="Largest request body the HTTP API accepts (413 above).")
    http_max_audio_s: float = Field(60.0, gt=0, le=600, description="Longest audio the HTTP API transcribes (413 "
                                                                    "above); at most ring_seconds.")
    http_request_timeout_s: float = Field(120.0, gt=0, description="How long an HTTP transcription may wait for its "
                                                                   "transcript (504 after).")
    metrics_port: int = Field(9108, ge=0, le=65535, description="Prometheus endpoint of the supervisor; 0: off.")
    metrics_host: str = Field("127.0.0.1", description="Where the Prometheus endpoint listens (it carries no "
                                                       "transcript, number or zip code: 0.0.0.0 for a remote "
                                                       "Prometheus is fine).")
    bus_pub_endpoint: str = Field("", description="Where processes publish (ZeroMQ XSUB side); empty: ipc:// in "
                                                  "run_dir.")
    bus_sub_endpoint: str = Field("", description="Where processes subscribe (ZeroMQ XPUB side); empty: ipc:// in "
                                                  "run_dir.")
    control_endpoint: str = Field("", description="Children's heartbeats to the supervisor; empty: ipc:// in run_dir.")
    http_header_timeout_s: float = Field(10.0, gt=0, description="How long an HTTP connection may take to send a "
                                                                 "request's line and headers (or stay idle between "
                                                                 "requests); then it is closed.")
    http_body_timeout_s: float = Field(60.0, gt=0, description="How long an HTTP request's body may take to arrive "
                                                               "(408 and the connection closed after).")
    http_max_connections: int = Field(256, ge=1, description="HTTP connections open at once; more are closed as they "
                                                             "are accepted.")

    # --- supervision --------------------------------------------------------------------------
    heartbeat_interval_s: float = Field(1.0, gt=0)
    heartbeat_timeout_s: float = Field(5.0, gt=0, description="No heartbeat for this long: the process is reported "
                                                              "unresponsive.")
    unresponsive_kill_s: float = Field(15.0, gt=0, description="No heartbeat for this long: its stacks are dumped, it "
                                                               "is killed and restarted.")
    start_timeout_s: float = Field(120.0, gt=0, description="A child must report ready within this (model loading "
                                                            "included).")
    stop_timeout_s: float = Field(5.0, gt=0, description="After SIGTERM, how long a child may take before SIGKILL.")
    restart_backoff_max_s: float = Field(30.0, gt=0)

    @field_validator("bus_pub_endpoint", "bus_sub_endpoint", "control_endpoint", "asr_endpoint")
    @classmethod
    def _zmq_endpoint(cls, value: str) -> str:
        if value and not value.startswith(("ipc://", "tcp://", "inproc://")):
            raise ValueError("must start with ipc://, tcp:// or inproc://")
        return value

    @field_validator("redis_url")
    @classmethod
    def _redis_url(cls, value: str) -> str:
        if not value:
            return value
        if not value.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError("must start with redis://, rediss:// or unix://")
        parts = urlsplit(value)
        if parts.scheme == "unix":
            if not parts.path:
                raise ValueError("a unix:// URL names the socket: unix:///run/redis/redis.sock (?db=N)")
            return value
        try:
            _ = parts.port  # parsed when read
        except ValueError:
            raise ValueError("the port must be a number: redis://HOST:6379/0") from None
        db = parts.path.strip("/")
        if db and not db.isdigit():
            raise ValueError("the path is the database number: redis://HOST:6379/0")
        return value

    @field_validator("redis_sentinels")
    @classmethod
    def _redis_sentinels(cls, value: str) -> str:
        parse_sentinels(value)
        return value

    @field_validator("ari_url", "whisper_url", "intent_main_url", "intent_faq_url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        if value and not value.startswith(("http://", "https://")):
            raise ValueError("must start with http:// or https://")
        return value.rstrip("/")

    @model_validator(mode="before")
    @classmethod
    def _node_defaults(cls, data: Any) -> Any:
        """The node id and, in a cluster, the per-node ARI application, resolved once here: the
        children get the resolved values."""
        if not isinstance(data, dict):
            return data
        data = dict(data)
        if not data.get("node_id"):
            host = "".join(c if c.isalnum() or c in "_.-" else "-" for c in socket.gethostname())[:32] or "node"
            data["node_id"] = f"{host}-{data.get('instance') or 'default'}"[:48]
        clustered = data.get("role", "all") != "all" or data.get("asr_transport", "local") == "stream"
        if clustered and not data.get("ari_app"):
            data["ari_app"] = f"rtcore-{data['node_id']}"
        return data

    @model_validator(mode="after")
    def _cluster_needs_a_shared_redis(self) -> Settings:
        if self.role != "all" and not self.redis_url and not self.redis_sentinels:
            raise ValueError(f"role {self.role} works with the other nodes through one shared Redis: set redis_url "
                             "(e.g. redis://redis-host:6379/0) or redis_sentinels")
        if bool(self.redis_tls_cert_file) != bool(self.redis_tls_key_file):
            raise ValueError("redis_tls_cert_file and redis_tls_key_file go together: set both or neither")
        return self

    @model_validator(mode="after")
    def _redis_connection(self) -> Settings:
        """Credentials given once, TLS options only with TLS, and no credentials for the private
        redis-server (it takes none)."""
        inline_user, inline_password = redis_url_credentials(self.redis_url)
        if inline_password and self.redis_password.get_secret_value():
            raise ValueError("redis_url carries a password (redis://user:PASSWORD@host) and redis_password is set "
                             "too: keep one, preferably redis_password or redis_password_file (out of the URL, out "
                             "of the logs)")
        if inline_user and self.redis_username and inline_user != self.redis_username:
            raise ValueError(f"redis_url names the ACL user {inline_user!r} and redis_username is "
                             f"{self.redis_username!r}: keep one")
        tls_options = [name for name in ("redis_tls_ca_file", "redis_tls_cert_file", "redis_tls_key_file")
                       if getattr(self, name)]
        if tls_options and not self.redis_url.startswith("rediss://"):
            got = (f"it is a {self.redis_url.split(':', 1)[0]}:// URL" if self.redis_url else "it is empty")
            hint = (" (with redis_sentinels its host is not used: rediss://master/0 turns TLS on)"
                    if self.redis_sentinels else "")
            raise ValueError(f"{' and '.join(tls_options)} {'is' if len(tls_options) == 1 else 'are'} for TLS: "
                             f"redis_url must start with rediss:// ({got}){hint}")
        if not self.redis_url and not self.redis_sentinels and (self.redis_username
                                                                or self.redis_password.get_secret_value()):
            raise ValueError("redis_username / redis_password are set but not redis_url (or redis_sentinels): the "
                             "private redis-server `rtcore launch` starts takes no password; set redis_url to the "
                             "shared Redis, or leave them empty")
        return self

    @model_validator(mode="after")
    def _http_beyond_loopback_needs_a_token(self) -> Settings:
        if not is_loopback(self.http_host) and not self.http_token.get_secret_value():
            raise ValueError(f"http_host {self.http_host} is beyond loopback, and the HTTP service shows what callers "
                             "said: set http_token (or http_token_file), or listen on 127.0.0.1")
        return self

    # --- derived paths ------------------------------------------------------------------------
    @property
    def clustered(self) -> bool:
        """Utterances go through the cluster's Redis stream (role media or asr, or asr_transport stream)."""
        return self.role != "all" or self.asr_transport == "stream"

    @property
    def runs_asr(self) -> bool:
        """This node loads Whisper and transcribes (roles all and asr)."""
        return self.role != "media"

    @property
    def runs_calls(self) -> bool:
        """This node takes calls: ARI control, capture, VAD, dialog (roles all and media)."""
        return self.role != "asr"

    @property
    def run_path(self) -> Path:
        if self.run_dir:
            return Path(self.run_dir)
        base = os.environ.get("XDG_RUNTIME_DIR")
        root = Path(base) / "rtcore" if base else Path(f"/tmp/rtcore-{os.getuid()}")
        return root / self.instance

    @property
    def data_path(self) -> Path:
        return Path(self.data_dir) if self.data_dir else Path.home() / ".local/share/rtcore" / self.instance

    @property
    def ari_base_url(self) -> str:
        """Asterisk's ARI, or the embedded simulator's when none is configured."""
        return self.ari_url or f"http://127.0.0.1:{self.sim_ari_port}/ari"

    @property
    def prompts_path(self) -> Path:
        return Path(self.prompts_dir) if self.prompts_dir else self.data_path / "prompts"

    @property
    def sim_sounds_path(self) -> Path:
        """The embedded PBX's own "Asterisk sounds directory" (launch installs the prompts there)."""
        return self.data_path / "sounds"

    @property
    def model_cache_path(self) -> Path:
        return Path(self.model_cache_dir) if self.model_cache_dir else Path.home() / ".cache/rtcore/models"

    @property
    def ring_capacity(self) -> int:
        """Samples per call slot, rounded up to whole VAD chunks."""
        chunks = -(-int(self.ring_seconds * self.sample_rate) // self.chunk_size)
        return chunks * self.chunk_size

    def endpoint(self, which: Literal["bus_pub", "bus_sub", "control", "asr"]) -> str:
        configured = getattr(self, f"{which}_endpoint")
        return configured or f"ipc://{self.run_path / (which + '.sock')}"

    # --- (de)serialisation --------------------------------------------------------------------
    def to_child_json(self) -> str:
        """Every value, secrets revealed: only for a child's stdin, never for a log."""
        data = self.model_dump()
        data["ari_password"] = self.ari_password.get_secret_value()
        data["http_token"] = self.http_token.get_secret_value()
        data["redis_password"] = self.redis_password.get_secret_value()
        return json.dumps(data)

    @classmethod
    def from_child_json(cls, text: str) -> Settings:
        return cls.model_validate_json(text)

    def redacted(self) -> dict[str, Any]:
        """For logs and `rtcore config`: secrets shown as '**********'."""
        data = self.model_dump(mode="json")
        data["redis_url"] = mask_redis_url(self.redis_url)  # a password may be inline
        return data


FIELD_NAMES = frozenset(Settings.model_fields)


def is_loopback(host: str) -> bool:
    """127.0.0.0/8, ::1 or localhost: reachable from this machine only."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a name: it may resolve anywhere


def read_config_file(path: str | Path) -> dict[str, Any]:
    """A YAML (.yaml/.yml), TOML (.toml) or JSON (.json) mapping of setting names to values."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(f"config file {path}: {exc.strerror or exc}") from exc
    try:
        if path.suffix == ".toml":
            data: Any = tomllib.loads(text)
        elif path.suffix == ".json":
            data = json.loads(text)
        else:
            data = yaml.safe_load(text)
    except (yaml.YAMLError, tomllib.TOMLDecodeError, json.JSONDecodeError) as exc:
        raise ConfigError(f"config file {path}: cannot parse: {exc}") from exc
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path}: top level must be a mapping of setting names to values")
    return data


def env_layer(environ: Mapping[str, str]) -> dict[str, str]:
    """RTCORE_<NAME> variables; an unknown RTCORE_ name is an error (a typo must not go unnoticed)."""
    layer: dict[str, str] = {}
    for key, value in environ.items():
        if not key.startswith(ENV_PREFIX) or key == ENV_CONFIG_FILE:
            continue
        name = key[len(ENV_PREFIX):].lower()
        if name not in FIELD_NAMES:
            raise ConfigError(f"{key}: no such setting (known: {', '.join(sorted(FIELD_NAMES))})")
        layer[name] = value
    return layer


def load_settings(
    config_file: str | Path | None = None,
    environ: Mapping[str, str] | None = None,
    cli: Mapping[str, Any] | None = None,
) -> Settings:
    """Merge the four layers and validate once. The config file is `config_file`, else $RTCORE_CONFIG."""
    environ = os.environ if environ is None else environ
    sources: dict[str, str] = {}
    merged: dict[str, Any] = {}
    path = config_file or environ.get(ENV_CONFIG_FILE)
    layers: list[tuple[str, Mapping[str, Any]]] = []
    if path:
        layers.append((f"config file {path}", read_config_file(path)))
    layers.append(("environment", env_layer(environ)))
    layers.append(("command line", {k: v for k, v in (cli or {}).items() if v is not None}))
    for origin, layer in layers:
        for name, value in layer.items():
            merged[name] = value
            sources[name] = origin
    for secret in ("ari_password", "http_token", "redis_password"):
        from_file = f"{secret}_file"
        if merged.get(from_file):
            if secret in merged:
                raise ConfigError(f"invalid configuration:\n  {from_file}: set either it or {secret}, not both "
                                  f"({secret} from {sources[secret]}, {from_file} from {sources[from_file]})")
            merged[secret] = _read_secret(str(merged[from_file]), sources[from_file], from_file)
    try:
        return Settings.model_validate(merged)
    except ValidationError as exc:
        raise ConfigError(_describe(exc, merged, sources)) from None


def _read_secret(path: str, origin: str, field: str) -> str:
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"invalid configuration:\n  {field}: cannot read {path}: "
                          f"{getattr(exc, 'strerror', None) or exc} (from {origin})") from None
    if not lines or not lines[0].strip():
        raise ConfigError(f"invalid configuration:\n  {field}: {path} is empty (from {origin})")
    return lines[0].strip()


def _describe(exc: ValidationError, merged: Mapping[str, Any], sources: Mapping[str, str]) -> str:
    lines = ["invalid configuration:"]
    for err in exc.errors():
        if not err["loc"]:  # a rule across settings: its message names them
            lines.append(f"  {str(err['msg']).removeprefix('Value error, ')}")
            continue
        name = str(err["loc"][0])
        if err["type"] == "extra_forbidden":
            lines.append(f"  {name}: no such setting (from {sources.get(name, 'defaults')})")
            continue
        origin = sources.get(name, "defaults")
        shown = ("'**********'" if "password" in name or "token" in name
                 else repr(mask_redis_url(str(merged.get(name)))) if name == "redis_url" else repr(merged.get(name)))
        if origin == "environment":
            origin = f"environment {ENV_PREFIX}{name.upper()}"
        elif origin == "command line":
            origin = f"command line --{name.replace('_', '-')}"
        lines.append(f"  {name}: {err['msg']} (got {shown} from {origin})")
    return "\n".join(lines)
