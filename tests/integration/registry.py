# -*- coding: utf-8 -*-
# Copyright: barepod.linux developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""A real registry for the image tests, and test images built offline.

- ``Registry``: Debian's docker-registry (the CNCF distribution registry) on 127.0.0.1 at a
  free port, storage in a throwaway directory; stopped by killing only its own pid.
- ``write_layout``: an OCI image layout of given layers and config (one manifest, one tag).
- ``busybox_layout``: an OCI image layout of busybox made from the host's busybox-static
  (/bin/busybox + a link per applet, config ``Cmd ["sh"]``), written by hand so it needs no
  network and no daemon.
- ``registries_conf``: a registries.conf making the registry the mirror of docker.io and
  registry.k8s.io, so unmodified references (``busybox``) pull from it. The primary locations
  are a closed loopback port, so a failing mirror never falls back to the internet.
"""

import contextlib
import gzip
import hashlib
import io
import json
import os
import signal
import socket
import subprocess
import tarfile
import time

BUSYBOX = '/bin/busybox'


def free_port():
    s = socket.socket()
    s.bind(('127.0.0.1', 0))
    port = s.getsockname()[1]
    s.close()
    return port


class Registry(object):
    def __init__(self, workdir, htpasswd=None, tls=False):
        self.workdir = str(workdir)
        self.cert_dir = make_certs(os.path.join(self.workdir, 'certs')) if tls else None  # holds ca.crt
        self.htpasswd = htpasswd  # (user, password): basic auth through an htpasswd file (bcrypt)
        self.storage = os.path.join(self.workdir, 'storage')
        self.port = free_port()
        self.host = '127.0.0.1:%d' % self.port
        self.proc = None

    def start(self):
        os.makedirs(self.storage, exist_ok=True)
        conf = os.path.join(self.workdir, 'config.yml')
        with open(conf, 'w') as f:
            f.write('version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: %s\n'
                    '  delete:\n    enabled: true\nhttp:\n  addr: %s\n' % (self.storage, self.host))
            if self.cert_dir:
                f.write('  tls:\n    certificate: %s/server.pem\n    key: %s/server-key.pem\n'
                        % (os.path.dirname(self.cert_dir), os.path.dirname(self.cert_dir)))
            if self.htpasswd:
                import warnings
                with warnings.catch_warnings():
                    warnings.simplefilter('ignore', DeprecationWarning)
                    import crypt
                hashed = crypt.crypt(self.htpasswd[1], crypt.mksalt(crypt.METHOD_BLOWFISH))
                pw = os.path.join(self.workdir, 'htpasswd')
                with open(pw, 'w') as h:
                    h.write('%s:%s\n' % (self.htpasswd[0], hashed))
                f.write('auth:\n  htpasswd:\n    realm: barepod-test\n    path: %s\n' % pw)
        log = open(os.path.join(self.workdir, 'registry.log'), 'wb')
        self.proc = subprocess.Popen(['/usr/bin/docker-registry', 'serve', conf], stdout=log, stderr=log,
                                     stdin=subprocess.DEVNULL, start_new_session=True)
        log.close()
        deadline = time.time() + 20
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError('docker-registry exited: %s' % open(os.path.join(self.workdir, 'registry.log')).read())
            try:
                socket.create_connection(('127.0.0.1', self.port), timeout=0.5).close()
                return self
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise RuntimeError('docker-registry did not listen on %s' % self.host)

    def stop(self):
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                os.kill(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)
        self.proc = None

    def push(self, layout, tag, repo, all_platforms=False):
        """skopeo copy oci:<layout>:<tag> docker://<this registry>/<repo>."""
        argv = ['skopeo', 'copy', '--quiet']
        argv += ['--dest-cert-dir', self.cert_dir] if self.cert_dir else ['--dest-tls-verify=false']
        if self.htpasswd:
            argv += ['--dest-creds', '%s:%s' % self.htpasswd]
        if all_platforms:
            argv += ['--all', '--preserve-digests']
        subprocess.run(argv + ['oci:%s:%s' % (layout, tag), 'docker://%s/%s' % (self.host, repo)],
                       check=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE)

    def blob_path(self, digest):
        hexd = digest.split(':', 1)[1]
        return os.path.join(self.storage, 'docker', 'registry', 'v2', 'blobs', 'sha256', hexd[:2], hexd, 'data')

    def registries_conf(self, path):
        closed = '127.0.0.1:%d' % free_port()  # nothing listens there: no fallback leaves loopback
        with open(str(path), 'w') as f:
            f.write('unqualified-search-registries = ["docker.io"]\n')
            for prefix in ('docker.io', 'registry.k8s.io'):
                f.write('\n[[registry]]\nprefix = "%s"\nlocation = "%s"\ninsecure = true\n'
                        '[[registry.mirror]]\nlocation = "%s"\ninsecure = true\n' % (prefix, closed, self.host))
        return str(path)


def make_certs(path):
    """A CA of the test's own and a server certificate for 127.0.0.1 signed by it (openssl);
    returns <path>/ca (a cert dir holding only ca.crt, as containers/image reads it)."""
    ca = os.path.join(path, 'ca')
    os.makedirs(ca)

    def ssl(*argv):
        subprocess.run(('openssl',) + argv, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=path)
    ssl('req', '-x509', '-newkey', 'rsa:2048', '-nodes', '-keyout', 'ca-key.pem', '-out', 'ca/ca.crt', '-days', '1',
        '-subj', '/CN=barepod test CA')
    ssl('req', '-newkey', 'rsa:2048', '-nodes', '-keyout', 'server-key.pem', '-out', 'server.csr', '-subj', '/CN=127.0.0.1')
    with open(os.path.join(path, 'san.ext'), 'w') as f:
        f.write('subjectAltName=IP:127.0.0.1\n')
    ssl('x509', '-req', '-in', 'server.csr', '-CA', 'ca/ca.crt', '-CAkey', 'ca-key.pem', '-CAcreateserial',
        '-out', 'server.pem', '-days', '1', '-extfile', 'san.ext')
    return ca


def _blob(blobs, data):
    d = hashlib.sha256(data).hexdigest()
    with open(os.path.join(blobs, d), 'wb') as f:
        f.write(data)
    return 'sha256:' + d, len(data)


def busybox_layer(extra=()):
    """A gzip'd layer: bin/busybox, a link per applet, empty /tmp /etc /proc ..., extra (name, bytes)."""
    buf = io.BytesIO()
    applets = subprocess.check_output([BUSYBOX, '--list']).decode().split()
    with tarfile.open(fileobj=buf, mode='w', format=tarfile.PAX_FORMAT) as tf:
        for d in ('bin', 'etc', 'tmp', 'proc', 'sys', 'dev', 'root'):
            ti = tarfile.TarInfo(d)
            ti.type, ti.mode, ti.mtime = tarfile.DIRTYPE, 0o1777 if d == 'tmp' else 0o755, 1700000000
            tf.addfile(ti)
        with open(BUSYBOX, 'rb') as f:
            data = f.read()
        ti = tarfile.TarInfo('bin/busybox')
        ti.size, ti.mode, ti.mtime = len(data), 0o755, 1700000000
        tf.addfile(ti, io.BytesIO(data))
        for a in applets:
            if a == 'busybox':
                continue
            ti = tarfile.TarInfo('bin/' + a)
            ti.type, ti.linkname, ti.mode, ti.mtime = tarfile.SYMTYPE, 'busybox', 0o777, 1700000000
            tf.addfile(ti)
        for name, data in extra:
            ti = tarfile.TarInfo(name)
            ti.size, ti.mode, ti.mtime = len(data), 0o644, 1700000000
            tf.addfile(ti, io.BytesIO(data))
    raw = buf.getvalue()
    return gzip.compress(raw, mtime=0), 'sha256:' + hashlib.sha256(raw).hexdigest()


def write_layout(path, layers, config, tag='latest'):
    """An OCI layout at `path`: `layers` [(gzip blob, diff_id)], `config` (the image config's
    ``config``). Returns the manifest digest."""
    path = str(path)
    blobs = os.path.join(path, 'blobs', 'sha256')
    os.makedirs(blobs, exist_ok=True)
    descs = []
    for blob, _diff in layers:
        d, size = _blob(blobs, blob)
        descs.append(dict(mediaType='application/vnd.oci.image.layer.v1.tar+gzip', digest=d, size=size))
    cfg = dict(architecture=_goarch(), os='linux', created='2023-11-14T22:13:20Z', config=config,
               rootfs=dict(type='layers', diff_ids=[diff for _b, diff in layers]))
    cdig, csize = _blob(blobs, json.dumps(cfg, sort_keys=True).encode())
    man = dict(schemaVersion=2, mediaType='application/vnd.oci.image.manifest.v1+json',
               config=dict(mediaType='application/vnd.oci.image.config.v1+json', digest=cdig, size=csize), layers=descs)
    mdig, msize = _blob(blobs, json.dumps(man, sort_keys=True).encode())
    with open(os.path.join(path, 'oci-layout'), 'w') as f:
        f.write('{"imageLayoutVersion": "1.0.0"}')
    with open(os.path.join(path, 'index.json'), 'w') as f:
        json.dump(dict(schemaVersion=2, manifests=[dict(
            mediaType='application/vnd.oci.image.manifest.v1+json', digest=mdig, size=msize,
            annotations={'org.opencontainers.image.ref.name': tag})]), f)
    return mdig


def busybox_layout(path, tag='latest', config=None, extra=()):
    """An OCI image layout at `path` holding busybox as `tag`; returns the manifest digest."""
    layer, diff_id = busybox_layer(extra)
    cfg = dict(Env=['PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin'], Cmd=['sh'])
    cfg.update(config or {})
    return write_layout(path, [(layer, diff_id)], cfg, tag=tag)


def _goarch():
    m = os.uname().machine
    return {'x86_64': 'amd64', 'aarch64': 'arm64'}.get(m, m)


def two_platform_layout(path, tag='latest'):
    """An OCI layout whose `tag` is an index of two images: busybox for this machine and a
    one-file image for another architecture. Returns (index digest, {arch: manifest digest})."""
    path = str(path)
    host = _goarch()
    mine = busybox_layout(path, tag='host-only')
    blobs = os.path.join(path, 'blobs', 'sha256')
    other_arch = 's390x' if host != 's390x' else 'amd64'
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode='w') as tf:
        data = b'not for this machine\n'
        ti = tarfile.TarInfo('which')
        ti.size, ti.mtime = len(data), 1700000000
        tf.addfile(ti, io.BytesIO(data))
    raw = buf.getvalue()
    ldig, lsize = _blob(blobs, gzip.compress(raw, mtime=0))
    cfg = dict(architecture=other_arch, os='linux', config=dict(Cmd=['/which']),
               rootfs=dict(type='layers', diff_ids=['sha256:' + hashlib.sha256(raw).hexdigest()]))
    cdig, csize = _blob(blobs, json.dumps(cfg, sort_keys=True).encode())
    man = dict(schemaVersion=2, mediaType='application/vnd.oci.image.manifest.v1+json',
               config=dict(mediaType='application/vnd.oci.image.config.v1+json', digest=cdig, size=csize),
               layers=[dict(mediaType='application/vnd.oci.image.layer.v1.tar+gzip', digest=ldig, size=lsize)])
    odig, osize = _blob(blobs, json.dumps(man, sort_keys=True).encode())
    msize = os.path.getsize(os.path.join(blobs, mine.split(':')[1]))
    index = dict(schemaVersion=2, mediaType='application/vnd.oci.image.index.v1+json', manifests=[
        dict(mediaType='application/vnd.oci.image.manifest.v1+json', digest=odig, size=osize,
             platform=dict(os='linux', architecture=other_arch)),
        dict(mediaType='application/vnd.oci.image.manifest.v1+json', digest=mine, size=msize,
             platform=dict(os='linux', architecture=host))])
    idig, isize = _blob(blobs, json.dumps(index, sort_keys=True).encode())
    with open(os.path.join(path, 'index.json'), 'w') as f:
        json.dump(dict(schemaVersion=2, manifests=[dict(
            mediaType='application/vnd.oci.image.index.v1+json', digest=idig, size=isize,
            annotations={'org.opencontainers.image.ref.name': tag})]), f)
    return idig, {host: mine, other_arch: odig}


@contextlib.contextmanager
def busybox_registry(work, tags=('latest',)):
    """A started test registry holding the offline busybox image as library/busybox:<tag> for each
    tag, with `manifest`, `layout` and `conf` (a registries.conf making it the docker.io mirror)."""
    reg = Registry(work).start()
    try:
        layout = str(work / 'busybox-oci')
        reg.manifest = busybox_layout(layout)
        for tag in tags:
            reg.push(layout, 'latest', 'library/busybox:%s' % tag)
        reg.conf = reg.registries_conf(work / 'registries.conf')
        reg.layout = layout
        yield reg
    finally:
        reg.stop()
