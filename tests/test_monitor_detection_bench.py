"""The synthetic half of bench/monitor_detection.py: planted spikes straddle the detector's
thresholds, and recall is reported against their size."""

import importlib.util
import math
from pathlib import Path

import numpy as np

BENCH = Path(__file__).resolve().parent.parent / "bench" / "monitor_detection.py"


def _bench():
    spec = importlib.util.spec_from_file_location("monitor_detection_bench", BENCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_planted_spikes_straddle_the_6_sigma_and_2x_thresholds():
    bench = _bench()
    rng = np.random.default_rng(0)
    ratios, sigmas = [], []
    for _ in range(40):
        values, truth = bench.make_trace(rng, 3000)
        for s, (in_sigma, in_log) in zip(truth["spikes"], truth["spike_sizes"]):
            # the planted height is what the trace shows: spike over the median of its neighbours
            local = np.median(np.log(np.r_[values[s - 20 : s], values[s + 1 : s + 21]]))
            ratios.append(math.log(values[s]) - local)
            sigmas.append(in_sigma)
    assert len(sigmas) > 20
    assert min(sigmas) < 4 and max(sigmas) > 12  # planted from 2 to 14 sigma
    assert sum(r < math.log(2.0) for r in ratios) >= 5  # some below the 2x ratio ...
    assert sum(r > math.log(3.0) for r in ratios) >= 5  # ... some well above it


def test_recall_by_size_table(capsys):
    bench = _bench()
    # (size in sigma, size in log units, detected)
    bench.print_recall_by_size([(3.0, 0.5, False), (7.0, 1.0, True), (7.5, 1.2, False), (7.0, 0.3, False)])
    rows = {line.split()[0]: line for line in capsys.readouterr().out.splitlines()[2:]}
    assert rows["2-4"].split() == ["2-4", "0%", "of", "1", "-"]
    assert rows["6-8"].split() == ["6-8", "0%", "of", "1", "50%", "of", "2"]
    assert rows["12-14"].split() == ["12-14", "-", "-"]
