#!/usr/bin/env python3
"""`make bench`: every benchmark in bench/, one after the other, each against its real peer.

    python bench/run.py            # full sizes (the svc_rules nft full sync alone takes minutes)
    python bench/run.py --quick    # smaller sizes / fewer runs, a few minutes in all
    python bench/run.py sandbox veth_net

Each benchmark prints its own table of medians and ratios and writes JSON to bench/results/.
Benchmarks never assert on time; they report.
"""
import argparse
import os
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))

# name -> (full args, quick args)
BENCHES = [
    ('chroot_rootfs', [], ['--runs', '3']),
    ('image_unpack', [], ['--runs', '3']),
    ('sandbox', [], ['--runs', '5', '--no-ansible']),
    ('cgroup_audit', [], ['--cgroups', '2000', '--runs', '3', '--real', '500']),
    ('veth_net', ['--playbook-rounds', '3'], ['--rounds', '10', '--module-rounds', '2']),
    ('svc_rules', [], ['--quick']),
    ('pod', [], ['--quick']),
    ('image_pull', [], ['--runs', '3']),
]


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--quick', action='store_true')
    ap.add_argument('names', nargs='*', help='run only these')
    a = ap.parse_args()
    failed = []
    summary = []
    for name, full, quick in BENCHES:
        if a.names and name not in a.names:
            continue
        script = os.path.join(HERE, name + '.py')
        if not os.path.exists(script):
            continue
        cmd = [sys.executable, script] + (quick if a.quick else full)
        print('\n==== bench/%s.py %s' % (name, ' '.join(cmd[2:])), flush=True)
        t0 = time.monotonic()
        rc = subprocess.call(cmd)
        summary.append((name, rc, time.monotonic() - t0))
        if rc:
            failed.append(name)
    print('\n==== summary')
    for name, rc, secs in summary:
        print('%-14s %-6s %7.1f s' % (name, 'ok' if rc == 0 else 'rc=%d' % rc, secs))
    return 1 if failed else 0


if __name__ == '__main__':
    sys.exit(main())
