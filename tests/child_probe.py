"""A supervised child for the supervisor tests; PROBE_MODE picks its behaviour:
ok (beats until stopped), fail_init (reports a start-up failure), hang (ready, then stops beating),
ignore_term (ready, beats, ignores SIGTERM), drain (a dialog with two calls in progress: it
ignores the first Drain on the bus, takes the second, then its calls end one by one)."""

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
    if mode == "drain":
        drain_like_a_dialog(ctx)
        return
    from rtcore.runtime import telemetry

    loops = 0
    telemetry.CALLS_ACTIVE.set(2)  # a live gauge: gone with this process (multiprocess "livesum")
    while not ctx.wait(0.02) or mode == "ignore_term":
        loops += 1
        ctx.beat()
        if loops % 5 == 0:
            ctx.report({"loops": float(loops)})
            telemetry.CALLS_STARTED.inc()  # a counter: what this process counted outlives it


def drain_like_a_dialog(ctx: ProcessContext) -> None:
    from rtcore.runtime.bus import Subscriber
    from rtcore.runtime.messages import Drain

    subscriber = Subscriber(ctx.settings.endpoint("bus_sub"), [Drain])
    drains, calls, draining_for = 0, 2, 0
    while not ctx.wait(0.05):
        ctx.beat()
        drains += len(subscriber.drain())
        if drains >= 2:  # the first one is lost, as a message published before we listened would be
            draining_for += 1
            if draining_for % 10 == 0 and calls:
                calls -= 1
        ctx.report({"calls": float(calls), "draining": float(drains >= 2), "drains_received": float(drains),
                     "drain_calls_at_start": 2.0 if drains >= 2 else 0.0, "drain_finished": float(2 - calls),
                     "drain_ended": 0.0, "refused_draining": 0.0})
    subscriber.close()


if __name__ == "__main__":
    run_process(main)
