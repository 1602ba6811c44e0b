"""A supervised child for the supervisor tests; PROBE_MODE picks its behaviour:
ok (beats until stopped), fail_init (reports a start-up failure), hang (ready, then stops beating),
ignore_term (ready, beats, ignores SIGTERM)."""

from __future__ import annotations

import os
import signal

from rtcore.runtime.process import ProcessContext, run_process


def main(ctx: ProcessContext) -> None:
    mode = os.environ.get("PROBE_MODE", "ok")
    if mode == "fail_init":
        raise RuntimeError("probe cannot start: no such model")
    if mode == "ignore_term":
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    ctx.ready()
    if mode == "hang":
        signal.pause()
    loops = 0
    while not ctx.wait(0.02) or mode == "ignore_term":
        loops += 1
        ctx.beat()
        if loops % 5 == 0:
            ctx.report({"loops": float(loops)})


if __name__ == "__main__":
    run_process(main)
