#!/usr/bin/env python3
# -*- coding: utf-8 -*-
# Copyright: barepod.linux developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""chroot_rootfs against its real peers, in one run (as root):

1. library closure of the chapter's programs: our ELF reader vs `ld.so --list` (what ldd runs);
2. the chapter's box (bash, ls, ps, kill): chroot_rootfs (manager, cold) vs an ldd + cp shell
   script, the usual way to do the chapter's step by hand;
3. the same box again (converged): chroot_rootfs (nothing to do) vs the script (copies again);
4. unpacking a ~1400-file root filesystem tar: our confined extraction vs GNU tar -x.

Prints medians and ratios (ours / peer), writes bench/results/chroot_rootfs.json.
Usage: .venv/bin/python bench/chroot_rootfs.py [--runs N]
"""

import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, os.path.join(REPO, 'tests'))
import conftest  # noqa: E402,F401  (makes ansible_collections.barepod.linux importable)

from _timing import pair, root_bench_args  # noqa: E402
from ansible_collections.barepod.linux.plugins.module_utils._elf import Resolver, parse_elf  # noqa: E402
from ansible_collections.barepod.linux.plugins.module_utils._image import Image, apply_image  # noqa: E402
from ansible_collections.barepod.linux.plugins.module_utils._rootfs import RootfsManager  # noqa: E402
from ansible_collections.barepod.linux.plugins.module_utils._safefs import SafeRoot  # noqa: E402

BINARIES = ['/bin/bash', '/bin/ls', '/usr/bin/ps', '/usr/bin/kill']
SCRIPT = r'''
set -e
box="$1"; shift
mkdir -p "$box"
for b in "$@"; do
  mkdir -p "$box$(dirname "$b")"; cp "$b" "$box$b"
  for lib in $(ldd "$b" | grep -o '/[^ ]*'); do
    mkdir -p "$box$(dirname "$lib")"; cp "$lib" "$box$lib"
  done
done
'''


def params(path):
    return dict(path=path, state='present', binaries=BINARIES, busybox=False, busybox_path='/bin/busybox',
                image=None, image_format='auto', mounts=[], shm_size='0', etc_files=False, hostname=None,
                subdomain=None, pod_ips=None, host_aliases=None, dns=None, allowed_host_paths=[])


def main():
    args = root_bench_args(9, 'copies keep ownership, like the module')
    ldso = parse_elf('/bin/ls').interp
    work = tempfile.mkdtemp(prefix='bprootfs-bench-')
    rows = []
    try:
        # 1. closure
        def ours_closure():
            for b in BINARIES:
                Resolver().closure(b)

        def ldso_closure():
            for b in BINARIES:
                subprocess.run([ldso, '--list', b], stdout=subprocess.DEVNULL, check=True)
        rows.append(('library closure of 4 programs',) + pair(ours_closure, ldso_closure, args.runs)
                    + ('ld.so --list',))

        # 2. cold box
        ours_box = os.path.join(work, 'ours', 'box')
        peer_box = os.path.join(work, 'peer', 'box')

        def clean(p):
            def f():
                shutil.rmtree(os.path.dirname(p), ignore_errors=True)
                os.makedirs(os.path.dirname(p))
            return f

        def ours_build():
            RootfsManager(params(ours_box)).run()

        def peer_build():
            subprocess.run(['sh', '-c', SCRIPT, 'box', peer_box] + BINARIES, check=True)
        rows.append(('chapter box, cold',) + pair(ours_build, peer_build, args.runs, clean(ours_box), clean(peer_box))
                    + ('ldd + cp script',))
        # 3. converged
        ours_build()
        peer_build()
        rows.append(('chapter box, second run',) + pair(ours_build, peer_build, args.runs) + ('ldd + cp script',))
        assert not RootfsManager(params(ours_box)).run()['changed']

        # 4. image extraction
        src = '/usr/lib/python3.11' if os.path.isdir('/usr/lib/python3.11') else '/usr/share/doc'
        img = os.path.join(work, 'rootfs.tar')
        with tarfile.open(img, 'w') as tf:
            tf.add(src, 'usr/lib/payload')
        n = sum(1 for _ in tarfile.open(img))
        ours_root = os.path.join(work, 'x-ours', 'root')
        peer_root = os.path.join(work, 'x-peer', 'root')

        def fresh(p):
            def f():
                shutil.rmtree(os.path.dirname(p), ignore_errors=True)
                os.makedirs(p)
            return f

        def ours_extract():
            apply_image(SafeRoot(ours_root), Image(img, 'tar'), [])

        def peer_extract():
            subprocess.run(['tar', '-xf', img, '-C', peer_root], check=True)
        rows.append(('unpack %d-member tar' % n,) + pair(ours_extract, peer_extract, args.runs, fresh(ours_root),
                                                          fresh(peer_root)) + ('GNU tar -x',))
    finally:
        shutil.rmtree(work, ignore_errors=True)

    print('%-34s %12s %12s %8s  %s' % ('case', 'ours (ms)', 'peer (ms)', 'ratio', 'peer'))
    for name, ours, peer, what in rows:
        print('%-34s %12.2f %12.2f %8.2f  %s' % (name, ours * 1e3, peer * 1e3, ours / peer, what))
    os.makedirs(os.path.join(HERE, 'results'), exist_ok=True)
    out = os.path.join(HERE, 'results', 'chroot_rootfs.json')
    with open(out, 'w') as f:
        json.dump(dict(runs=args.runs, rows=[dict(case=r[0], ours_s=r[1], peer_s=r[2], ratio=r[1] / r[2], peer=r[3])
                                             for r in rows]), f, indent=2)
    print('wrote', out)


if __name__ == '__main__':
    main()
