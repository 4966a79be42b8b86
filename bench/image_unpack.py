#!/usr/bin/env python3
# -*- coding: utf-8 -*-
# Copyright: barepod.linux developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Layer unpacking and container root filesystems against their real peers, in one run (as root):

1. a 1,501-member layer (the issue's case: /usr/lib/python3.11 as one tar), uncompressed:
   the snapshot unpack (confined by SafeRoot, diff_id verified, whiteouts converted) vs GNU tar -xf;
2. the same layer gzip'd (as registries serve layers): snapshot unpack vs GNU tar -xzf;
3. the same layer through _image.apply_image (what chroot_rootfs's image source uses) vs tar -xf;
4. a container rootfs of an already stored image: overlay (one mount over the shared snapshot)
   vs copy (every layer applied into the container's dir), both against tar -xf of the layer.

Prints medians and ratios (ours / peer), writes bench/results/image_unpack.json. No timed
assertions. Usage: .venv/bin/python bench/image_unpack.py [--runs N]
"""

import gzip
import hashlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, os.path.join(REPO, 'tests'))
import conftest  # noqa: E402,F401  (makes ansible_collections.barepod.linux importable)

from ansible_collections.barepod.linux.plugins.module_utils import _imagestore as st  # noqa: E402
from ansible_collections.barepod.linux.plugins.module_utils import _snapshot as sn  # noqa: E402
from ansible_collections.barepod.linux.plugins.module_utils._image import Image, apply_image  # noqa: E402
from ansible_collections.barepod.linux.plugins.module_utils._safefs import SafeRoot  # noqa: E402
from _timing import root_bench_args


CPU = {}


def _cpu():
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


def pair(ours, peer, runs, setup_ours=None, setup_peer=None):
    """Medians of ours and peer, runs interleaved (so load from elsewhere hits both alike).
    The CPU time each used (user + system, this process and its children: GNU tar and the
    gzip it runs) is kept too, in CPU[case]: on a busy machine it varies less than wall time."""
    a, b, ca, cb = [], [], [], []
    for _ in range(runs):
        for fn, setup, out, cout in ((ours, setup_ours, a, ca), (peer, setup_peer, b, cb)):
            if setup:
                setup()
            c = _cpu()
            t = time.perf_counter()
            fn()
            out.append(time.perf_counter() - t)
            cout.append(_cpu() - c)
    CPU[len(CPU)] = (statistics.median(ca), statistics.median(cb))
    return statistics.median(a), statistics.median(b)


def fresh(p):
    def f():
        shutil.rmtree(p, ignore_errors=True)
        os.makedirs(p)
        os.sync()  # the previous run's writeback does not land on the next one
    return f


def unpack(layer, root):
    hr = sn.open_layer(layer)
    try:
        sn.unpack_diff(SafeRoot(root, direct=True), sn.layer_members(hr, layer), [])
        return hr.drain()
    finally:
        hr.close()


def main():
    args = root_bench_args(7, 'ownership is applied, overlay is mounted')
    work = tempfile.mkdtemp(prefix='bpunpack-bench-')
    rows = []
    try:
        src = '/usr/lib/python3.11' if os.path.isdir('/usr/lib/python3.11') else '/usr/share/doc'
        layer = os.path.join(work, 'layer.tar')
        with tarfile.open(layer, 'w', format=tarfile.PAX_FORMAT) as tf:
            tf.add(src, 'usr/lib/payload')
        n = sum(1 for _ in tarfile.open(layer))
        with open(layer, 'rb') as f:
            data = f.read()
        diff_id = 'sha256:' + hashlib.sha256(data).hexdigest()
        layer_gz = layer + '.gz'
        with open(layer_gz, 'wb') as f:
            f.write(gzip.compress(data, 6, mtime=0))
        ours_root, peer_root = os.path.join(work, 'ours'), os.path.join(work, 'peer')

        def ours_plain():
            assert unpack(layer, ours_root) == diff_id

        def ours_gz():
            assert unpack(layer_gz, ours_root) == diff_id

        def tar_x():
            subprocess.run(['tar', '-xf', layer, '-C', peer_root], check=True)

        def tar_xz():
            subprocess.run(['tar', '-xzf', layer_gz, '-C', peer_root], check=True)

        def ours_apply():
            apply_image(SafeRoot(ours_root), Image(layer, 'tar'), [])
        rows.append(('snapshot unpack, %d-member tar' % n,) + pair(ours_plain, tar_x, args.runs, fresh(ours_root), fresh(peer_root))
                    + ('GNU tar -xf',))
        rows.append(('snapshot unpack, %d-member tar.gz' % n,) + pair(ours_gz, tar_xz, args.runs, fresh(ours_root), fresh(peer_root))
                    + ('GNU tar -xzf',))
        rows.append(('_image.apply_image, %d-member tar' % n,) + pair(ours_apply, tar_x, args.runs, fresh(ours_root), fresh(peer_root))
                    + ('GNU tar -xf',))

        # 4. containers of an image already in the store (its snapshot unpacked once)
        store = st.ImageStore(os.path.join(work, 'images'))
        with store.lock():
            with store.ingest() as ing:
                blob = ing.add_file(layer_gz, what='layer')
                cfg = dict(architecture=st.host_platform()['architecture'], os='linux', config={},
                           rootfs=dict(type='layers', diff_ids=[diff_id]))
                manifest = st._manifest_for(ing, json.dumps(cfg).encode(), [blob])
                store.commit(ing, ['example.com/bench:1'], store.record_from_manifest(ing, manifest, manifest, 'bench'))
        pods = os.path.join(work, 'pods')
        os.makedirs(pods)
        count = [0]
        made = []

        def container(mode):
            def f():
                count[0] += 1
                t = os.path.join(pods, 'c%d' % count[0])
                made.append(t)
                sn.prepare_rootfs(store, 'example.com/bench:1', t, mode=mode)
            return f
        try:
            sn.prepare_rootfs(store, 'example.com/bench:1', os.path.join(pods, 'warm'), mode='overlay')
            made.append(os.path.join(pods, 'warm'))
            rows.append(('container rootfs, overlay (stored)',) + pair(container('overlay'), tar_x, args.runs, None, fresh(peer_root))
                        + ('GNU tar -xf of the layer',))
            rows.append(('container rootfs, copy',) + pair(container('copy'), tar_x, args.runs, None, fresh(peer_root))
                        + ('GNU tar -xf of the layer',))
        finally:
            for t in made:
                sn.remove_rootfs(t)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    print('%-38s %10s %10s %7s %9s %9s %7s  %s' % ('case', 'ours (ms)', 'peer (ms)', 'ratio', 'ours cpu', 'peer cpu',
                                                    'cpu rat', 'peer'))
    for i, (name, ours, peer, what) in enumerate(rows):
        co, cp = CPU[i]
        print('%-38s %10.2f %10.2f %7.2f %9.2f %9.2f %7.2f  %s' % (name, ours * 1e3, peer * 1e3, ours / peer, co * 1e3, cp * 1e3,
                                                                  co / cp if cp else 0, what))
    os.makedirs(os.path.join(HERE, 'results'), exist_ok=True)
    out = os.path.join(HERE, 'results', 'image_unpack.json')
    with open(out, 'w') as f:
        json.dump(dict(runs=args.runs, rows=[dict(case=r[0], ours_s=r[1], peer_s=r[2], ratio=r[1] / r[2], peer=r[3],
                                                  ours_cpu_s=CPU[i][0], peer_cpu_s=CPU[i][1])
                                             for i, r in enumerate(rows)]), f, indent=2)
    print('wrote', out)


if __name__ == '__main__':
    main()
