"""rtcore.runtime.telemetry: metrics gathered from several processes' files, and quantiles read
back from histograms as Prometheus's histogram_quantile() computes them."""

from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

from rtcore.launch.report import RunHistograms
from rtcore.runtime import telemetry
from rtcore.runtime.telemetry import HistogramSnapshot, bucket_quantile
from tests.conftest import REPO

OBSERVE = """
import sys
from rtcore.runtime import telemetry
for value in map(float, sys.argv[1:]):
    telemetry.EOS_TO_TRANSCRIPT.observe(value)
    telemetry.ASR_BATCH_SIZE.observe(2)
"""


def test_histogram_quantile_as_prometheus_computes_it() -> None:
    # 10 observations: 4 in (0, 0.1], 4 in (0.1, 0.2], 2 in (0.2, 0.5]
    buckets = [(0.1, 4.0), (0.2, 8.0), (0.5, 10.0), (math.inf, 10.0)]
    assert bucket_quantile(0.5, buckets) == 0.1 + 0.1 * (5 - 4) / 4  # rank 5 in the second bucket
    assert math.isclose(bucket_quantile(0.95, buckets), 0.2 + 0.3 * (9.5 - 8) / 2)
    assert bucket_quantile(0.2, buckets) == 0.05  # the first bucket starts at 0
    assert bucket_quantile(0.99, [(0.1, 1.0), (math.inf, 5.0)]) == 0.1  # in +Inf: the highest finite bound
    assert math.isnan(bucket_quantile(0.5, [(0.1, 0.0), (math.inf, 0.0)]))  # nothing observed


def test_histograms_of_several_processes_are_summed_and_survive_their_processes(tmp_path: Path) -> None:
    metrics_dir = telemetry.prepare_directory(tmp_path / "metrics")
    env = {**os.environ, telemetry.MULTIPROC_ENV: str(metrics_dir), "PYTHONPATH": str(REPO)}
    for values in (["0.12", "0.18", "0.3"], ["0.9", "1.6"]):  # two processes, both gone when read
        subprocess.run([sys.executable, "-c", OBSERVE, *values], env=env, check=True)
    run = RunHistograms.read(metrics_dir)
    latency = run.series["eos_to_transcript"]
    assert latency.count == 5 and math.isclose(latency.total, 0.12 + 0.18 + 0.3 + 0.9 + 1.6)
    assert dict(latency.buckets)[0.2] == 2 and dict(latency.buckets)[1.0] == 4
    assert run.series["batch_size"].mean() == 2.0
    # The report's figures are this quantile of these buckets, in ms.
    assert run.ms("eos_to_transcript", 0.5) == round(bucket_quantile(0.5, latency.buckets) * 1000, 1)
    assert 250.0 <= run.ms("eos_to_transcript", 0.5) <= 300.0  # the 3rd of 5 (0.3) is in (0.25, 0.3]
    later = HistogramSnapshot(latency.buckets, latency.total + 1, latency.count)
    assert math.isclose(later.minus(latency).total, 1.0) and later.minus(latency).count == 0
