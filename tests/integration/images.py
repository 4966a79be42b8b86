#!/usr/bin/env python3
# -*- coding: utf-8 -*-
# Copyright: barepod.linux developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Test images built offline (no image registry; Debian's package mirror only).

- ``nginx_layout``: an OCI layout of nginx made from Debian's nginx package and the libraries it
  links (``apt-get download`` + ``dpkg-deb -x`` into an empty root, no maintainer scripts run; what
  they would do is done here: the default site enabled, users, log and state directories), with
  the config Docker Hub's nginx image has (docker-library/nginx ``mainline/debian/Dockerfile``):
  Entrypoint ``["/docker-entrypoint.sh"]``, Cmd ``["nginx", "-g", "daemon off;"]``, ExposedPorts
  80/tcp, StopSignal SIGQUIT, Env PATH and NGINX_VERSION, logs linked to /dev/stdout and
  /dev/stderr. One layer; /bin/sh is dash. Cached on disk under ``$BAREPOD_TEST_IMAGE_CACHE``
  (default /var/cache/barepod/test-images), keyed by the recipe, the architecture and the
  candidate version of every package, so a machine builds it once per Debian point release.
- ``user_layout``: busybox with /etc/passwd entry ``app:x:1000:1000`` and ``User: "app"``.

``populated_registry(workdir)`` starts a test registry holding them (and busybox) for a test.
Usage (builds or reuses the layouts; pushes them with skopeo when given a registry):
    python tests/integration/images.py [--push 127.0.0.1:5000] [--force]
"""

import argparse
import gzip
import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
if HERE not in sys.path:
    sys.path.insert(0, HERE)

from registry import busybox_layout, write_layout  # noqa: E402

RECIPE = 1  # bump when the recipe changes: cached layouts of an older recipe are not reused
CACHE = os.environ.get('BAREPOD_TEST_IMAGE_CACHE', '/var/cache/barepod/test-images')
# nginx's own Depends (iproute2 and debconf left out: maintainer scripts never run here) and dash as /bin/sh
NGINX_PACKAGES = ['nginx', 'nginx-common', 'libc6', 'libgcc-s1', 'libcrypt1', 'libpcre2-8-0', 'libssl3', 'zlib1g', 'dash']
PATH_ENV = 'PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin'
MTIME = 1700000000
DROP = ('usr/share/doc', 'usr/share/man', 'usr/share/lintian', 'usr/share/vim', 'usr/share/apport', 'usr/share/info',
        'etc/init.d', 'etc/logrotate.d', 'etc/ufw', 'etc/default', 'lib/systemd')

# The official entrypoint in essence: when the command is nginx, run the scripts in
# /docker-entrypoint.d (none here), then exec the command (PID 1 stays nginx, SIGQUIT reaches it).
ENTRYPOINT = b'''#!/bin/sh
# barepod test image: /docker-entrypoint.sh as Docker Hub's nginx image has it, in essence
set -e
if [ "$1" = "nginx" ] || [ "$1" = "nginx-debug" ]; then
    for f in /docker-entrypoint.d/*.sh; do
        [ -f "$f" ] || continue
        echo "$0: Launching $f" >&2
        sh "$f"
    done
fi
exec "$@"
'''
PASSWD = (b'root:x:0:0:root:/root:/bin/sh\n'
          b'www-data:x:33:33:www-data:/var/www:/usr/sbin/nologin\n'
          b'nginx:x:101:101:nginx user:/nonexistent:/bin/false\n'
          b'nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n')
GROUP = b'root:x:0:\nwww-data:x:33:\nnginx:x:101:\nnogroup:x:65534:\n'


def _arch():
    return subprocess.check_output(['dpkg', '--print-architecture']).decode().strip()


def candidate_versions(packages=NGINX_PACKAGES):
    """{package: candidate version} from apt's lists (no network)."""
    out = subprocess.check_output(['apt-cache', 'policy'] + list(packages), env=dict(os.environ, LC_ALL='C')).decode()
    versions, current = {}, None
    for line in out.splitlines():
        if line and not line.startswith(' ') and line.endswith(':'):
            current = line[:-1]
        elif line.strip().startswith('Candidate:') and current:
            versions[current] = line.split(':', 1)[1].strip()
    missing = [p for p in packages if versions.get(p) in (None, '(none)')]
    if missing:
        raise RuntimeError('no candidate for %s in apt lists (apt-get update?)' % ', '.join(missing))
    return versions


def cache_key(versions):
    doc = json.dumps(dict(recipe=RECIPE, arch=_arch(), versions=versions), sort_keys=True)
    return hashlib.sha256(doc.encode()).hexdigest()[:16]


def _write(root, rel, data, mode=0o644):
    path = os.path.join(root, rel)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, 'wb') as f:
        f.write(data)
    os.chmod(path, mode)


def _symlink(root, rel, target):
    path = os.path.join(root, rel)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    if os.path.lexists(path):
        os.unlink(path)
    os.symlink(target, path)


def make_nginx_rootfs(rootfs, workdir, versions):
    debs = os.path.join(workdir, 'debs')
    os.makedirs(debs)
    subprocess.run(['apt-get', 'download', '-q', '-o', 'APT::Sandbox::User=root']
                   + ['%s=%s' % (p, versions[p]) for p in NGINX_PACKAGES],
                   cwd=debs, check=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    os.makedirs(rootfs)
    for deb in sorted(os.listdir(debs)):
        subprocess.run(['dpkg-deb', '-x', os.path.join(debs, deb), rootfs], check=True)
    for rel in DROP:
        shutil.rmtree(os.path.join(rootfs, rel), ignore_errors=True)
    # what the maintainer scripts and the official Dockerfile would do
    for d, mode in (('tmp', 0o1777), ('run', 0o755), ('proc', 0o555), ('sys', 0o555), ('dev', 0o755), ('root', 0o700),
                    ('var/lib/nginx', 0o755), ('var/log/nginx', 0o755), ('var/www/html', 0o755),
                    ('docker-entrypoint.d', 0o755), ('etc/nginx/sites-enabled', 0o755)):
        os.makedirs(os.path.join(rootfs, d), exist_ok=True)
        os.chmod(os.path.join(rootfs, d), mode)
    _symlink(rootfs, 'etc/nginx/sites-enabled/default', '/etc/nginx/sites-available/default')
    _symlink(rootfs, 'var/log/nginx/access.log', '/dev/stdout')
    _symlink(rootfs, 'var/log/nginx/error.log', '/dev/stderr')
    with open(os.path.join(rootfs, 'usr/share/nginx/html/index.html'), 'rb') as f:
        _write(rootfs, 'var/www/html/index.html', f.read())
    _write(rootfs, 'etc/passwd', PASSWD)
    _write(rootfs, 'etc/group', GROUP)
    _write(rootfs, 'etc/nsswitch.conf', b'passwd: files\ngroup: files\nhosts: files dns\n')
    _write(rootfs, 'docker-entrypoint.sh', ENTRYPOINT, 0o755)
    # the loader's cache, as libc-bin's trigger makes it
    _write(rootfs, 'etc/ld.so.conf', b'include /etc/ld.so.conf.d/*.conf\n')
    subprocess.run(['ldconfig', '-r', rootfs], check=True)
    # a newer nginx linking a library not in NGINX_PACKAGES fails here, naming it, not in a test later
    p = subprocess.run(['chroot', rootfs, '/usr/sbin/nginx', '-V'], stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    if p.returncode != 0:
        raise RuntimeError('nginx does not start in the built root: %s' % p.stdout.decode(errors='replace').strip())


def layer_from_dir(root):
    """A deterministic gzip'd tar of `root` (sorted, owned by 0:0, clamped mtimes); (blob, diff_id)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode='w', format=tarfile.PAX_FORMAT) as tf:
        for dirpath, dirs, files in os.walk(root):
            dirs.sort()
            for name in sorted(dirs + files):
                path = os.path.join(dirpath, name)
                rel = os.path.relpath(path, root)
                ti = tf.gettarinfo(path, rel)
                ti.mtime = min(ti.mtime, MTIME)
                ti.uid = ti.gid = 0  # every file of these packages is root's (dpkg-deb -c)
                ti.uname = ti.gname = ''
                if ti.isreg():
                    with open(path, 'rb') as f:
                        tf.addfile(ti, f)
                else:
                    tf.addfile(ti)
    raw = buf.getvalue()
    return gzip.compress(raw, compresslevel=6, mtime=0), 'sha256:' + hashlib.sha256(raw).hexdigest()


def nginx_config(versions):
    upstream = versions['nginx'].split(':')[-1].split('-')[0]
    return dict(Env=[PATH_ENV, 'NGINX_VERSION=' + upstream], Entrypoint=['/docker-entrypoint.sh'],
                Cmd=['nginx', '-g', 'daemon off;'], ExposedPorts={'80/tcp': {}}, StopSignal='SIGQUIT',
                Labels={'maintainer': 'barepod tests (Debian nginx %s)' % versions['nginx']})


def nginx_layout(cache=CACHE, force=False, log=None):
    """The nginx OCI layout (tag ``latest``), built once per cache key; returns its path.
    Built in a temporary directory and renamed into place, so a killed build leaves no layout."""
    versions = candidate_versions()
    path = os.path.join(cache, 'nginx-%s' % cache_key(versions))
    if not force and os.path.exists(os.path.join(path, 'index.json')):
        return path
    os.makedirs(cache, exist_ok=True)
    t0 = time.monotonic()
    work = tempfile.mkdtemp(prefix='.build-nginx-', dir=cache)
    try:
        rootfs = os.path.join(work, 'rootfs')
        make_nginx_rootfs(rootfs, work, versions)
        layout = os.path.join(work, 'layout')
        write_layout(layout, [layer_from_dir(rootfs)], nginx_config(versions))
        if force and os.path.exists(path):
            shutil.rmtree(path)
        try:
            os.rename(layout, path)
        except OSError:  # a concurrent build got there first: keep its (identical) layout
            if not os.path.exists(os.path.join(path, 'index.json')):
                raise
    finally:
        shutil.rmtree(work, ignore_errors=True)
    if log:
        log('built %s in %.1f s' % (path, time.monotonic() - t0))
    return path


def user_layout(path, tag='latest'):
    """busybox running as `app` (uid 1000, gid 1000) from its own /etc/passwd and /etc/group."""
    return busybox_layout(path, tag=tag, config=dict(User='app'), extra=[
        ('etc/passwd', b'root:x:0:0:root:/root:/bin/sh\napp:x:1000:1000:app:/home/app:/bin/sh\n'),
        ('etc/group', b'root:x:0:\napp:x:1000:\n')])


# Tags the Kubernetes documentation's manifests name (pods/simple-pod.yaml and the Deployment
# examples: nginx:1.14.2, the rolling update: nginx:1.16.1, pod-nginx-style: nginx), all this one
# test image (NGINX_VERSION in its Env tells the real version), so those manifests pull unchanged.
NGINX_TAGS = ('latest', '1.14.2', '1.16.1')


def populated_registry(workdir):
    """A started Registry (tests/integration/registry.py) in `workdir` holding busybox:latest,
    nginx (NGINX_TAGS) and app-user:latest, with ``reg.conf`` a registries.conf making it the mirror
    of docker.io and registry.k8s.io. The caller stops it (``reg.stop()``)."""
    from registry import Registry
    workdir = str(workdir)
    reg = Registry(workdir).start()
    try:
        reg.nginx = nginx_layout()
        for tag in NGINX_TAGS:
            reg.push(reg.nginx, 'latest', 'library/nginx:' + tag)
        reg.app_user = os.path.join(workdir, 'app-user')
        user_layout(reg.app_user)
        reg.push(reg.app_user, 'latest', 'library/app-user:latest')
        reg.busybox = os.path.join(workdir, 'busybox')
        busybox_layout(reg.busybox)
        reg.push(reg.busybox, 'latest', 'library/busybox:latest')
        reg.conf = reg.registries_conf(os.path.join(workdir, 'registries.conf'))
    except BaseException:
        reg.stop()
        raise
    return reg


def push(layout, host, repo, tag='latest'):
    subprocess.run(['skopeo', 'copy', '--quiet', '--dest-tls-verify=false', 'oci:%s:%s' % (layout, tag),
                    'docker://%s/%s' % (host, repo)], check=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--push', metavar='HOST:PORT', help='push to this (plain HTTP) registry as library/nginx (NGINX_TAGS) and library/app-user')
    ap.add_argument('--force', action='store_true', help='rebuild the nginx layout even when cached')
    ap.add_argument('--cache', default=CACHE)
    a = ap.parse_args()
    t0 = time.monotonic()
    nginx = nginx_layout(a.cache, a.force, log=print)
    print('nginx layout: %s (%.1f s)' % (nginx, time.monotonic() - t0))
    user = os.path.join(a.cache, 'app-user')  # cheap: made again every time, from the host's busybox
    tmp = tempfile.mkdtemp(prefix='.build-user-', dir=a.cache)
    try:
        user_layout(tmp)
        os.chmod(tmp, 0o755)
        shutil.rmtree(user, ignore_errors=True)
        os.rename(tmp, user)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print('app-user layout: %s' % user)
    if a.push:
        for tag in NGINX_TAGS:
            push(nginx, a.push, 'library/nginx:' + tag)
        push(user, a.push, 'library/app-user:latest')
        print('pushed to %s: library/nginx:{%s} library/app-user:latest' % (a.push, ','.join(NGINX_TAGS)))


if __name__ == '__main__':
    main()
