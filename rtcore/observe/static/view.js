/* rtcore live view: Server-Sent Events from /view/events into tables and hand-drawn <canvas> charts.
 * Events: "snapshot" (everything: at connect and every second), "call" (one call changed; state "ended":
 * it is over). Every text is set with textContent (transcripts are what callers said): no innerHTML.
 * EventSource reconnects by itself; when it gives up (the server refused the stream) or goes quiet, this
 * script opens a new one, with a growing delay. */
"use strict";

(function () {
  const $ = (id) => document.getElementById(id);
  const PALETTE = ["#58a6ff", "#3fb950", "#d29922", "#f778ba", "#a371f7", "#39c5cf", "#ff7b72", "#e3b341",
    "#79c0ff", "#56d364", "#ffa657", "#d2a8ff", "#8590a0"];
  const GRID = "rgba(133, 144, 160, 0.16)";
  const MUTED = "#8590a0";
  const TARGET_COLOR = "#f85149";
  const STALE_MS = 3500; // snapshots come every second
  const RECONNECT_QUIET_MS = 10000;

  const state = {
    active: new Map(), // call_id -> call, in progress
    finished: [], // newest first
    finishedLimit: 50,
    ended: 0,
    offset: 0, // server wall clock minus this browser's, in seconds
    snap: null,
    es: null,
    conn: "connecting",
    lastEventAt: 0,
    retryTimer: null,
    retryDelayMs: 1000,
    fresh: new Set(),
    drawPending: false,
  };

  // --- small DOM helpers (text only) ------------------------------------------------------------
  function el(tag, className, text) {
    const node = document.createElement(tag);
    if (className) node.className = className;
    if (text !== undefined && text !== null) node.textContent = String(text);
    return node;
  }
  function cell(field, text, className) {
    const td = el("td", className, text);
    td.dataset.field = field;
    return td;
  }
  function emptyRow(columns, text) {
    const tr = el("tr", "placeholder");
    const td = el("td", "empty", text);
    td.colSpan = columns;
    tr.append(td);
    return tr;
  }
  function setText(id, text, tone) {
    const node = $(id);
    node.textContent = text;
    if (tone !== undefined) {
      node.classList.remove("ok", "warn", "bad");
      if (tone) node.classList.add(tone);
    }
  }

  // --- formatting ---------------------------------------------------------------------------------
  const isNum = (v) => typeof v === "number" && isFinite(v);
  function fmtMs(ms) {
    if (!isNum(ms) || ms <= 0) return "–";
    return ms < 1000 ? Math.round(ms) + " ms" : (ms / 1000).toFixed(2) + " s";
  }
  function fmtDuration(seconds) {
    if (!isNum(seconds)) return "–";
    const s = Math.max(0, Math.floor(seconds));
    const h = Math.floor(s / 3600), m = Math.floor((s % 3600) / 60), r = s % 60;
    const mm = h ? String(m).padStart(2, "0") : String(m);
    return (h ? h + ":" : "") + mm + ":" + String(r).padStart(2, "0");
  }
  function fmtClock(wall) {
    if (!isNum(wall) || wall <= 0) return "–";
    const d = new Date(wall * 1000);
    return [d.getHours(), d.getMinutes(), d.getSeconds()].map((n) => String(n).padStart(2, "0")).join(":");
  }
  function fmtBytes(bytes) {
    if (!isNum(bytes) || bytes <= 0) return "–";
    const mib = bytes / 1048576;
    return mib >= 1024 ? (mib / 1024).toFixed(2) + " GiB" : mib.toFixed(mib < 100 ? 1 : 0) + " MiB";
  }
  function fmtAge(seconds) {
    if (!isNum(seconds) || seconds < 0) return "–";
    return seconds < 10 ? seconds.toFixed(1) + " s" : Math.round(seconds) + " s";
  }
  const serverNow = () => Date.now() / 1000 + state.offset;
  function durationOf(call) {
    if (call.state !== "ended" && isNum(call.started_at) && call.started_at > 0) {
      return Math.max(0, serverNow() - call.started_at);
    }
    return call.duration_s;
  }
  function latencyTone(ms) {
    const target = (state.snap && state.snap.latency_target_ms) || 1500;
    if (!isNum(ms) || ms <= 0) return "";
    return ms > target ? "bad" : ms > 0.8 * target ? "warn" : "";
  }
  function outcomeTone(outcome) {
    if (outcome === "qualified") return "ok";
    if (outcome === "error") return "bad";
    if (outcome === "abandoned" || outcome === "refused" || outcome === "rejected") return "warn";
    return "neutral";
  }

  // --- calls --------------------------------------------------------------------------------------
  function renderActive() {
    const calls = Array.from(state.active.values()).sort((a, b) =>
      (a.started_at || 0) - (b.started_at || 0) || (a.call_id < b.call_id ? -1 : a.call_id > b.call_id ? 1 : 0));
    const rows = calls.map((call) => {
      const tr = el("tr", state.fresh.has(call.call_id) ? "fresh" : "");
      tr.dataset.callId = call.call_id;
      const text = cell("transcript", call.last_transcript || "–", "text");
      if (call.last_transcript) text.title = call.last_transcript;
      tr.append(
        cell("call_id", call.call_id, "id"),
        cell("state", call.state, "state"),
        cell("turns", call.turns, "num"),
        text,
        cell("intent", call.last_intent || "–", "intent"),
        cell("last_turn", fmtMs(call.last_turn_ms), "num " + latencyTone(call.last_turn_ms)),
        cell("duration", fmtDuration(durationOf(call)), "num"),
      );
      return tr;
    });
    if (!rows.length) rows.push(emptyRow(7, "no call in progress"));
    $("active-calls").tBodies[0].replaceChildren(...rows);
    $("active-count").textContent = String(calls.length);
  }

  function renderFinished() {
    const rows = state.finished.map((call) => {
      const tr = el("tr", state.fresh.has(call.call_id) ? "fresh" : "");
      tr.dataset.callId = call.call_id;
      const outcome = cell("outcome", null);
      outcome.append(el("span", "badge " + outcomeTone(call.outcome), call.outcome || "–"));
      const text = cell("transcript", call.last_transcript || "–", "text");
      if (call.last_transcript) text.title = call.last_transcript;
      tr.append(
        cell("ended_at", fmtClock(call.ended_at), "muted"),
        cell("call_id", call.call_id, "id"),
        outcome,
        cell("turns", call.turns, "num"),
        cell("duration", fmtDuration(call.duration_s), "num"),
        cell("intent", call.last_intent || "–", "intent"),
        text,
      );
      return tr;
    });
    if (!rows.length) rows.push(emptyRow(7, "no call finished yet"));
    $("finished-calls").tBodies[0].replaceChildren(...rows);
    $("finished-count").textContent = String(state.finished.length);
  }

  function renderCallTiles() {
    const run = state.snap && state.snap.run;
    setText("tile-calls", String(state.active.size));
    setText("tile-slots", run ? "slots " + run.call_slots_in_use + " / " + run.call_slots + " in use" : "slots –");
    setText("tile-ended", String(state.ended));
    const forgotten = state.snap ? state.snap.counts.forgotten : 0;
    setText("tile-forgotten", forgotten ? forgotten + " calls in progress forgotten (over the limit)"
      : "since the view started", forgotten ? "warn" : "");
  }

  function applyCall(call) {
    if (call.state === "ended") {
      state.active.delete(call.call_id);
      if (!state.finished.some((c) => c.call_id === call.call_id)) state.ended += 1;
      state.finished = [call, ...state.finished.filter((c) => c.call_id !== call.call_id)]
        .slice(0, state.finishedLimit);
    } else {
      if (state.finished.some((c) => c.call_id === call.call_id)) return; // over already
      state.active.set(call.call_id, call);
    }
    state.fresh.add(call.call_id);
    renderActive();
    renderFinished();
    renderCallTiles();
    state.fresh.clear();
  }

  // --- run, ASR, processes ------------------------------------------------------------------------
  function setFlag(id, ok, text, title) {
    const node = $(id);
    node.dataset.ok = ok;
    node.textContent = text;
    node.title = title;
  }

  function renderRun(snap) {
    const run = snap.run, asr = snap.asr, target = snap.latency_target_ms;
    if (run && run.has_dialog) {
      setFlag("flag-ari", run.ari_connected ? "yes" : "no", "ARI", run.ari_connected ? "Asterisk connected" : "Asterisk not connected");
      setFlag("flag-redis", run.redis_connected ? "yes" : "no", "Redis", run.redis_connected ? "Redis connected" : "Redis not connected");
      setFlag("flag-draining", run.draining ? "warn" : "yes", run.draining ? "draining" : "taking calls",
        run.draining ? "draining: no new call is taken" : "new calls are taken");
    } else {
      const why = run ? "no dialog process in this run" : "no status from the supervisor yet";
      setFlag("flag-ari", "unknown", "ARI", why);
      setFlag("flag-redis", "unknown", "Redis", why);
      setFlag("flag-draining", "unknown", "calls", why);
    }
    const ages = [];
    if (run) ages.push("status " + fmtAge(run.age_s) + " ago");
    if (asr) ages.push("ASR " + fmtAge(asr.age_s) + " ago");
    setText("status-age", ages.length ? ages.join(" · ") : "no status yet",
      (run && run.age_s > 3) || (asr && asr.age_s > 3) ? "warn" : "");

    const recent = snap.recent || {};
    setText("tile-reply", fmtMs(recent.eos_to_reply_p95_ms), latencyTone(recent.eos_to_reply_p95_ms));
    setText("tile-reply-sub", recent.eos_to_reply_n
      ? "p50 " + fmtMs(recent.eos_to_reply_p50_ms) + " · " + recent.eos_to_reply_n + " turns · last minute"
      : "no turn in the last minute");
    setText("tile-transcript", fmtMs(recent.eos_to_transcript_p95_ms), latencyTone(recent.eos_to_transcript_p95_ms));
    setText("tile-transcript-sub", recent.eos_to_transcript_n
      ? "p50 " + fmtMs(recent.eos_to_transcript_p50_ms) + " · " + recent.eos_to_transcript_n + " utterances"
      : "no transcript in the last minute");
    if (asr) {
      const queue = asr.pending + asr.in_flight;
      setText("tile-queue", String(queue), asr.pending > asr.capacity ? "warn" : "");
      setText("tile-queue-sub", asr.pending + " pending · " + asr.in_flight + " in flight / " + asr.capacity);
      setText("tile-wait", fmtMs(asr.expected_wait_ms) === "–" ? "0 ms" : fmtMs(asr.expected_wait_ms),
        asr.expected_wait_ms > target ? "bad" : "");
      setText("tile-wait-sub", (isNum(asr.throughput) ? asr.throughput.toFixed(1) : "–") + " /s · " + asr.workers
        + " workers" + (asr.refused_full ? " · " + asr.refused_full + " refused (full)" : ""));
    } else {
      setText("tile-queue", "–", "");
      setText("tile-queue-sub", "no ASR status yet");
      setText("tile-wait", "–", "");
      setText("tile-wait-sub", "throughput –");
    }
  }

  function renderProcesses(snap) {
    const processes = (snap.run && snap.run.processes) || [];
    const rows = processes.map((p) => {
      const tr = el("tr");
      tr.dataset.process = p.name;
      const up = cell("up", null);
      const [tone, text] = p.up ? ["ok", "up"] : p.pid ? ["warn", "starting"] : ["bad", "down"];
      up.append(el("span", "badge " + tone, text));
      const beat = p.heartbeat_age_s;
      tr.append(
        cell("name", p.name, "id"),
        cell("pid", p.pid || "–", "num muted"),
        up,
        cell("restarts", p.restarts, "num" + (p.restarts ? " warn" : "")),
        cell("heartbeat", isNum(beat) && beat >= 0 ? fmtAge(beat) : "–",
          "num" + (beat > 5 ? " bad" : beat > 2 ? " warn" : "")),
        cell("cpu", isNum(p.cpu_percent) ? p.cpu_percent.toFixed(1) + " %" : "–", "num"),
        cell("rss", fmtBytes(p.rss_bytes), "num"),
      );
      return tr;
    });
    if (!rows.length) rows.push(emptyRow(7, snap.run ? "no process" : "no status from the supervisor yet"));
    $("processes").tBodies[0].replaceChildren(...rows);
    $("process-count").textContent = String(processes.length);
  }

  // --- charts (hand-drawn) ------------------------------------------------------------------------
  function niceCeil(v) {
    if (!(v > 0)) return 1;
    const p = Math.pow(10, Math.floor(Math.log10(v)));
    for (const m of [1, 1.2, 1.5, 2, 2.5, 3, 4, 5, 6, 8, 10]) if (m * p >= v * 0.9999) return m * p;
    return 10 * p;
  }
  function lastValue(values) {
    for (let i = values.length - 1; i >= 0; i--) if (isNum(values[i])) return values[i];
    return null;
  }

  /* spec: {lines: [{label, values, color, width, dash, maxGap}], refs: [{label, value, color}],
   *        floor (smallest top of the y axis), fmt(v, top), seconds (x span)} */
  function drawChart(canvas, spec) {
    const dpr = window.devicePixelRatio || 1;
    const w = canvas.clientWidth, h = canvas.clientHeight;
    if (!w || !h) return;
    if (canvas.width !== Math.round(w * dpr) || canvas.height !== Math.round(h * dpr)) {
      canvas.width = Math.round(w * dpr);
      canvas.height = Math.round(h * dpr);
    }
    const ctx = canvas.getContext("2d");
    ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
    ctx.clearRect(0, 0, w, h);
    const left = 40, right = 8, top = 8, bottom = 16;
    const pw = Math.max(10, w - left - right), ph = Math.max(10, h - top - bottom);
    let max = spec.floor || 1;
    for (const line of spec.lines) for (const v of line.values) if (isNum(v) && v > max) max = v;
    for (const ref of spec.refs || []) if (ref.value * 1.15 > max) max = ref.value * 1.15;
    max = niceCeil(max);
    const yOf = (v) => top + ph - ph * Math.min(Math.max(v, 0), max) / max;

    ctx.font = "10px system-ui, sans-serif";
    ctx.lineWidth = 1;
    ctx.strokeStyle = GRID;
    ctx.fillStyle = MUTED;
    ctx.textAlign = "right";
    ctx.textBaseline = "middle";
    for (let i = 0; i <= 4; i++) {
      const v = (max * i) / 4, y = Math.round(yOf(v)) + 0.5;
      ctx.beginPath();
      ctx.moveTo(left, y);
      ctx.lineTo(left + pw, y);
      ctx.stroke();
      ctx.fillText(spec.fmt(v, max), left - 5, y);
    }
    const span = spec.seconds || 300;
    ctx.textBaseline = "top";
    for (let s = 0; s <= span; s += 60) {
      const x = left + pw * (1 - s / span);
      ctx.textAlign = s === 0 ? "right" : s === span ? "left" : "center";
      ctx.fillText(s === 0 ? "now" : "−" + s / 60 + " min", x, top + ph + 3);
      if (s > 0 && s < span) {
        ctx.beginPath();
        ctx.moveTo(Math.round(x) + 0.5, top);
        ctx.lineTo(Math.round(x) + 0.5, top + ph);
        ctx.stroke();
      }
    }
    for (const ref of spec.refs || []) {
      const y = Math.round(yOf(ref.value)) + 0.5;
      ctx.save();
      ctx.strokeStyle = ref.color;
      ctx.setLineDash([5, 4]);
      ctx.beginPath();
      ctx.moveTo(left, y);
      ctx.lineTo(left + pw, y);
      ctx.stroke();
      ctx.restore();
      ctx.fillStyle = ref.color;
      ctx.textAlign = "left";
      ctx.textBaseline = "bottom";
      ctx.fillText(ref.label, left + 4, y - 2);
    }
    for (const line of spec.lines) {
      const values = line.values, n = values.length;
      if (!n) continue;
      const xOf = (i) => left + (n === 1 ? pw : (pw * i) / (n - 1));
      const maxGap = line.maxGap || 1;
      ctx.save();
      ctx.strokeStyle = line.color;
      ctx.fillStyle = line.color;
      ctx.lineWidth = line.width || 1.5;
      ctx.lineJoin = "round";
      if (line.dash) ctx.setLineDash(line.dash);
      ctx.beginPath();
      let last = -Infinity;
      const lonely = [];
      for (let i = 0; i < n; i++) {
        const v = values[i];
        if (!isNum(v)) continue;
        if (i - last <= maxGap) ctx.lineTo(xOf(i), yOf(v));
        else ctx.moveTo(xOf(i), yOf(v));
        const next = values.slice(i + 1, i + 1 + maxGap).some(isNum);
        if (i - last > maxGap && !next) lonely.push(i); // nothing to join it to: a dot
        last = i;
      }
      ctx.stroke();
      ctx.setLineDash([]);
      for (const i of lonely) {
        ctx.beginPath();
        ctx.arc(xOf(i), yOf(values[i]), 2, 0, 2 * Math.PI);
        ctx.fill();
      }
      ctx.restore();
    }
  }

  function renderLegend(id, lines, refs, fmt) {
    const items = lines.map((line) => {
      const item = el("span", "item");
      const swatch = el("span", "swatch" + (line.dash ? " dashed" : ""));
      if (line.dash) swatch.style.borderTopColor = line.color;
      else swatch.style.background = line.color;
      const value = lastValue(line.values);
      item.append(swatch, el("span", null, line.label), el("span", "val", value === null ? "–" : fmt(value)));
      return item;
    });
    for (const ref of refs || []) {
      const item = el("span", "item");
      const swatch = el("span", "swatch dashed");
      swatch.style.borderTopColor = ref.color;
      item.append(swatch, el("span", null, ref.label));
      items.push(item);
    }
    $(id).replaceChildren(...items);
  }

  const axisSeconds = (v, top) => (v === 0 ? "0" : (v / 1000).toFixed(top < 2000 ? 2 : 1) + " s");
  const axisCount = (v, top) => (top <= 4 ? v.toFixed(v % 1 ? 1 : 0) : String(Math.round(v)));
  const axisPercent = (v) => Math.round(v) + "%";

  function charts() {
    const snap = state.snap;
    if (!snap) return;
    const s = snap.series, seconds = s.points * s.step_s;
    const target = snap.latency_target_ms;
    const refs = [{ label: (target / 1000).toFixed(1) + " s target", value: target, color: TARGET_COLOR }];
    const latency = [
      { label: "reply p95", values: s.eos_to_reply_p95_ms, color: "#a371f7", width: 1.8, maxGap: 30 },
      { label: "reply p50", values: s.eos_to_reply_p50_ms, color: "#d2a8ff", width: 1, maxGap: 30, dash: [3, 2] },
      { label: "transcript p95", values: s.eos_to_transcript_p95_ms, color: "#58a6ff", width: 1.8, maxGap: 30 },
      { label: "transcript p50", values: s.eos_to_transcript_p50_ms, color: "#79c0ff", width: 1, maxGap: 30, dash: [3, 2] },
    ];
    drawChart($("chart-latency"), { lines: latency, refs, floor: 500, fmt: axisSeconds, seconds });
    renderLegend("legend-latency", latency, [], fmtMs);

    const batch = [
      { label: "max", values: s.asr_batch_max, color: "#d29922", width: 1.2, maxGap: 30 },
      { label: "mean", values: s.asr_batch_mean, color: "#3fb950", width: 1.8, maxGap: 30 },
    ];
    drawChart($("chart-batch"), { lines: batch, floor: 2, fmt: axisCount, seconds });
    renderLegend("legend-batch", batch, [], (v) => v.toFixed(1));

    const queue = [{ label: "pending + in flight", values: s.asr_queue, color: "#39c5cf", width: 1.8, maxGap: 3 }];
    const capacity = snap.asr ? [{ label: "capacity", value: snap.asr.capacity, color: "#8590a0" }] : [];
    drawChart($("chart-queue"), { lines: queue, refs: capacity, floor: 2, fmt: axisCount, seconds });
    renderLegend("legend-queue", queue, capacity.length ? [{ label: "capacity " + snap.asr.capacity, color: "#8590a0" }] : [],
      (v) => String(Math.round(v)));

    const names = Object.keys(s.cpu_percent).sort();
    const cpu = names.map((name, i) => ({
      label: name, values: s.cpu_percent[name], color: PALETTE[i % PALETTE.length], width: 1.4, maxGap: 3,
    }));
    drawChart($("chart-cpu"), { lines: cpu, floor: 10, fmt: axisPercent, seconds });
    renderLegend("legend-cpu", cpu, [], (v) => v.toFixed(0) + "%");
  }

  function scheduleCharts() {
    if (state.drawPending) return;
    state.drawPending = true;
    requestAnimationFrame(() => {
      state.drawPending = false;
      charts();
    });
  }

  // --- events ------------------------------------------------------------------------------------
  function applySnapshot(snap) {
    state.snap = snap;
    state.offset = snap.now - Date.now() / 1000;
    state.finishedLimit = snap.finished_limit || 50;
    state.active = new Map(snap.calls.map((call) => [call.call_id, call]));
    state.finished = snap.finished.slice(0, state.finishedLimit);
    state.ended = snap.counts.ended;
    renderActive();
    renderFinished();
    renderCallTiles();
    renderRun(snap);
    renderProcesses(snap);
    scheduleCharts();
  }

  function setConn(name, text) {
    state.conn = name;
    $("conn").dataset.state = name;
    document.body.dataset.conn = name;
    $("conn-text").textContent = text;
  }

  function received() {
    state.lastEventAt = Date.now();
    state.retryDelayMs = 1000;
    if (state.conn !== "live") setConn("live", "live");
  }

  function connect() {
    clearTimeout(state.retryTimer);
    if (state.es) state.es.close();
    // The query string goes along: an access token given to the page is the stream's as well.
    const es = new EventSource("/view/events" + window.location.search);
    state.es = es;
    es.addEventListener("snapshot", (event) => {
      if (es !== state.es) return;
      received();
      applySnapshot(JSON.parse(event.data));
    });
    es.addEventListener("call", (event) => {
      if (es !== state.es) return;
      received();
      applyCall(JSON.parse(event.data));
    });
    es.onerror = () => {
      if (es !== state.es) return;
      if (es.readyState === EventSource.CLOSED) { // refused (not an event stream): it will not retry itself
        const delay = state.retryDelayMs;
        state.retryDelayMs = Math.min(delay * 2, 15000);
        setConn("offline", "offline · retrying in " + Math.round(delay / 1000) + " s");
        state.retryTimer = setTimeout(connect, delay);
      } else {
        setConn("reconnecting", "reconnecting…");
      }
    };
  }

  function watchdog() {
    if ((state.conn !== "live" && state.conn !== "stale") || !state.lastEventAt) return;
    const quiet = Date.now() - state.lastEventAt;
    if (quiet > RECONNECT_QUIET_MS) {
      setConn("reconnecting", "reconnecting…");
      connect();
    } else if (quiet > STALE_MS) {
      setConn("stale", "no update for " + Math.round(quiet / 1000) + " s");
    }
  }

  function start() {
    setConn("connecting", "connecting…");
    renderActive();
    renderFinished();
    connect();
    setInterval(watchdog, 1000);
    window.addEventListener("resize", scheduleCharts);
  }

  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", start);
  else start();
})();
