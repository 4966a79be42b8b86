"""Drive pods through the module managers in one process (run under `nsenter --net=<node>`).

    python _worker.py <config.json>     -> one JSON object on stdout

config: {"op": "up"|"down"|"soak", "vars": node vars, "manifests": [...], ...}
"""
import json
import os
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
with open(sys.argv[1]) as _f:
    CFG = json.load(_f)
sys.path.insert(0, CFG['collections_root'])

from _node import PodDriver  # noqa: E402


def nfds(pid):
    try:
        return len(os.listdir('/proc/%d/fd' % pid))
    except OSError:
        return None


def main():
    drv = PodDriver(CFG['vars'])
    op = CFG['op']
    out = dict(op=op)
    if op == 'up':
        out['results'] = [drv.up(m, check=CFG.get('check', False)) for m in CFG['manifests']]
    elif op == 'down':
        out['results'] = [drv.down(m, gc=CFG.get('gc', False)) for m in CFG['manifests']]
    elif op == 'soak':
        long_lived = CFG['long_lived']
        first = drv.up(long_lived)
        pause = first['sandbox_pid']
        out['pause_pid'] = pause
        fds = [nfds(pause)]
        self_fds = [nfds(os.getpid())]
        times = []
        unexpected = []
        for i in range(CFG['cycles']):
            t0 = time.monotonic()
            # one bring-up/teardown cycle of the next chapter pod (they take turns)
            m = CFG['manifests'][i % len(CFG['manifests'])]
            r = drv.up(m)
            if not r['ip']:
                unexpected.append((i, 'no ip', m['metadata']['name']))
            drv.down(m)
            again = drv.up(long_lived)
            if again['changed'] or again['sandbox_pid'] != pause:
                unexpected.append((i, 'long-lived pod changed', again))
            times.append(time.monotonic() - t0)
            fds.append(nfds(pause))
            self_fds.append(nfds(os.getpid()))
        drv.down(long_lived)
        out.update(cycle_seconds=times, pause_fds=fds, worker_fds=self_fds, unexpected=unexpected)
    print(json.dumps(out, default=str))


if __name__ == '__main__':
    from ansible_collections.barepod.linux.plugins.module_utils._common import BarepodError
    try:
        main()
    except BarepodError as e:  # what the module would fail_json with
        print(json.dumps(dict(failed=True, msg=str(e))))
