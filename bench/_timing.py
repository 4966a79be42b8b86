"""Timing shared by the benchmarks that race one of ours against one peer."""
import statistics
import time


def pair(ours, peer, runs, setup_ours=None, setup_peer=None):
    """Medians of ours and peer over `runs` runs each, interleaved (ours, peer, ours, ...) so load
    from elsewhere hits both alike; a setup runs untimed before each run of its side."""
    a, b = [], []
    for _ in range(runs):
        for fn, setup, out in ((ours, setup_ours, a), (peer, setup_peer, b)):
            if setup:
                setup()
            t = time.perf_counter()
            fn()
            out.append(time.perf_counter() - t)
    return statistics.median(a), statistics.median(b)


def root_bench_args(default_runs, why_root):
    """The command line every root benchmark takes (--runs), after checking it runs as root."""
    import argparse
    import os
    import sys
    ap = argparse.ArgumentParser()
    ap.add_argument('--runs', type=int, default=default_runs)
    args = ap.parse_args()
    if os.geteuid() != 0:
        sys.exit('run as root (%s)' % why_root)
    return args
