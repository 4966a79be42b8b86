#!/usr/bin/env python3
# -*- coding: utf-8 -*-
# Copyright: barepod.linux developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The image module's pulls against podman's, from the same local registry, in one run (as root).

The nginx test image (tests/integration/images.py: Debian's nginx with Docker Hub nginx's config,
one layer) is pushed to Debian's docker-registry on 127.0.0.1, made the mirror of docker.io in a
registries.conf both tools read, and pulled as the unmodified `docker.io/library/nginx:latest`:

1. cold pull + store: the `image` module (run as Ansible runs it: a fresh interpreter) into an empty
   store vs `podman pull` into empty storage (vfs driver; podman also unpacks the layer there);
2. the same vs `podman pull` with the overlay driver (unpacks the layer once, as a snapshot);
3. cold pull + store + GNU tar -x of the stored layers into a directory (our pull plus the
   plain unpack a container's copy rootfs needs; the store has no unpack of its own yet) vs
   `podman pull` (vfs), which also leaves an unpacked directory;
4. cold pull + store vs `skopeo copy docker://... oci:<dir>` alone: the floor (the module is skopeo
   plus verifying and moving the blobs into the store);
5. the same tag again (pull policy Always: the tag is resolved, nothing is fetched) vs
   `podman pull` of an image already in its storage;
0. for scale, what starting costs: `image_info` of an empty store (a Python interpreter importing
   Ansible's module code) vs `podman images` on empty storage.

Runs alternate (ours, peer, ours, peer, ...) so load from elsewhere hits both alike; medians and
ratios (ours / peer) are printed and written to bench/results/image_pull.json. No assertion on time.
podman runs with --root/--runroot/--tmpdir and a storage.conf, registries.conf and policy.json in a
temporary directory; nothing of it is left behind.
Usage: .venv/bin/python bench/image_pull.py [--runs N]
"""

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, os.path.join(REPO, 'tests'))
sys.path.insert(0, os.path.join(REPO, 'tests', 'integration'))
import conftest  # noqa: E402  (makes ansible_collections.barepod.linux importable; run_module)

from _timing import pair, root_bench_args  # noqa: E402
from images import nginx_layout  # noqa: E402
from registry import Registry  # noqa: E402

REF = 'docker.io/library/nginx:latest'


class Podman(object):
    """podman with all its state under `root` and the test registry's configuration."""

    def __init__(self, root, driver, registries_conf, policy):
        self.root, self.driver, self.policy = root, driver, policy
        self.graph = os.path.join(root, 'graph')
        self.run_root = os.path.join(root, 'run')
        self.tmp = os.path.join(root, 'tmp')
        os.makedirs(self.tmp, exist_ok=True)
        conf = os.path.join(root, 'storage.conf')
        with open(conf, 'w') as f:
            f.write('[storage]\ndriver = "%s"\nrunroot = "%s"\ngraphroot = "%s"\n' % (driver, self.run_root, self.graph))
        self.env = dict(os.environ, CONTAINERS_STORAGE_CONF=conf, CONTAINERS_REGISTRIES_CONF=registries_conf,
                        TMPDIR=self.tmp)

    def __call__(self, *argv):
        return subprocess.run(['podman', '--root', self.graph, '--runroot', self.run_root, '--storage-driver', self.driver,
                               '--tmpdir', self.tmp, '--cgroup-manager', 'cgroupfs', '--events-backend', 'file'] + list(argv),
                              env=self.env, check=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE)

    def pull(self):
        self('pull', '--quiet', '--tls-verify=false', '--signature-policy', self.policy, REF)

    def reset(self):
        if os.path.isdir(self.graph):
            self('system', 'reset', '--force')
        for d in (self.graph, self.run_root):
            shutil.rmtree(d, ignore_errors=True)


def main():
    args = root_bench_args(7, 'podman with root storage; the image store keeps owners')
    for tool in ('podman', 'skopeo', 'docker-registry'):
        if not shutil.which(tool):
            sys.exit('%s not found (apt-get install podman skopeo docker-registry)' % tool)
    t0 = time.perf_counter()
    layout = nginx_layout()
    build_s = time.perf_counter() - t0
    work = tempfile.mkdtemp(prefix='bpimage-bench-')
    reg = Registry(os.path.join(work, 'registry'))
    podmen = []
    rows = []
    try:
        reg.start()
        reg.push(layout, 'latest', 'library/nginx:latest')
        conf = reg.registries_conf(os.path.join(work, 'registries.conf'))
        policy = os.path.join(work, 'policy.json')
        with open(policy, 'w') as f:
            f.write('{"default": [{"type": "insecureAcceptAnything"}]}\n')
        store = os.path.join(work, 'store')
        unpacked = os.path.join(work, 'unpacked')
        oci = os.path.join(work, 'skopeo-oci')
        vfs = Podman(os.path.join(work, 'podman-vfs'), 'vfs', conf, policy)
        overlay = Podman(os.path.join(work, 'podman-overlay'), 'overlay', conf, policy)
        podmen = [vfs, overlay]

        def ours():
            r = conftest.run_module('image', dict(name=REF, store_root=store, registries_conf=conf))
            if r.failed:
                raise RuntimeError(r['msg'])
            return r

        def fresh_store():
            shutil.rmtree(store, ignore_errors=True)

        def ours_and_unpack():
            r = ours()
            with open(os.path.join(store, 'blobs', 'sha256', r['image']['manifest'][7:])) as f:
                layers = [d['digest'][7:] for d in json.load(f)['layers']]
            os.makedirs(unpacked)
            for hexd in layers:
                subprocess.run(['tar', '-xzf', os.path.join(store, 'blobs', 'sha256', hexd), '-C', unpacked, '--numeric-owner'],
                               check=True)

        def fresh_store_and_dir():
            fresh_store()
            shutil.rmtree(unpacked, ignore_errors=True)

        def skopeo_copy():
            subprocess.run(['skopeo', '--registries-conf', conf, '--policy', policy, 'copy', '--quiet', '--src-tls-verify=false',
                            'docker://' + REF, 'oci:%s:latest' % oci], check=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE)

        def fresh_oci():
            shutil.rmtree(oci, ignore_errors=True)

        def ours_list():
            conftest.run_module('image_info', dict(store_root=os.path.join(work, 'empty-store')))

        def podman_list():
            vfs('images', '--quiet')
        rows.append(('start: list an empty store',) + pair(ours_list, podman_list, args.runs) + ('podman images (vfs)',))
        vfs.reset()
        rows.append(('cold pull + store',) + pair(ours, vfs.pull, args.runs, fresh_store, vfs.reset)
                    + ('podman pull (vfs)',))
        rows.append(('cold pull + store',) + pair(ours, overlay.pull, args.runs, fresh_store, overlay.reset)
                    + ('podman pull (overlay)',))
        rows.append(('cold pull + store + tar -x',) + pair(ours_and_unpack, vfs.pull, args.runs, fresh_store_and_dir, vfs.reset)
                    + ('podman pull (vfs)',))
        rows.append(('cold pull + store',) + pair(ours, skopeo_copy, args.runs, fresh_store, fresh_oci)
                    + ('skopeo copy to oci: (floor)',))
        ours()
        vfs.pull()
        rows.append(('same tag again (Always)',) + pair(ours, vfs.pull, args.runs) + ('podman pull, image present (vfs)',))
        size = sum(os.path.getsize(os.path.join(store, 'blobs', 'sha256', n)) for n in os.listdir(os.path.join(store, 'blobs', 'sha256')))
    finally:
        for p in podmen:
            try:
                p.reset()
            except (subprocess.CalledProcessError, OSError) as e:
                print('podman reset failed: %s' % e, file=sys.stderr)
        reg.stop()
        left = subprocess.run(['findmnt', '-rn', '-o', 'TARGET'], stdout=subprocess.PIPE).stdout.decode().split()
        for m in sorted((m for m in left if m.startswith(work + '/')), reverse=True):
            subprocess.run(['umount', m], check=False)
        shutil.rmtree(work, ignore_errors=True)

    print('nginx test image: %s (%.1f MB stored; layout ready in %.1f s)' % (os.path.basename(layout), size / 1e6, build_s))
    print('%-28s %11s %11s %7s  %s' % ('case', 'ours (ms)', 'peer (ms)', 'ratio', 'peer'))
    for name, o, p, what in rows:
        print('%-28s %11.1f %11.1f %7.2f  %s' % (name, o * 1e3, p * 1e3, o / p, what))
    os.makedirs(os.path.join(HERE, 'results'), exist_ok=True)
    out = os.path.join(HERE, 'results', 'image_pull.json')
    with open(out, 'w') as f:
        json.dump(dict(runs=args.runs, image=os.path.basename(layout), stored_bytes=size, layout_ready_s=build_s,
                       rows=[dict(case=r[0], ours_s=r[1], peer_s=r[2], ratio=r[1] / r[2], peer=r[3]) for r in rows]), f, indent=2)
    print('wrote', out)


if __name__ == '__main__':
    main()
