# -*- coding: utf-8 -*-
# Copyright: barepod.linux developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The offline nginx test image (Debian's nginx with Docker Hub nginx's config) and the image
with a USER, pulled through the image module from a real registry acting as docker.io's mirror,
referenced unmodified (``nginx``, ``docker.io/library/nginx:latest``); then the stored layers
unpacked and nginx run from them as the config says (Entrypoint + Cmd, Env, StopSignal) in a
throwaway net/pid/mount namespace, answering HTTP on its own loopback."""

import json
import os
import shlex
import subprocess
import tarfile

import pytest

from conftest import run_module

from images import nginx_layout, populated_registry

pytestmark = pytest.mark.skipif(not os.path.exists('/usr/bin/docker-registry') or not os.path.exists('/usr/bin/skopeo'),
                                reason='needs docker-registry and skopeo')


@pytest.fixture(scope='module')
def registry(tmp_path_factory):
    reg = populated_registry(tmp_path_factory.mktemp('registry'))
    try:
        yield reg
    finally:
        reg.stop()


def image(args, store, reg):
    return run_module('image', dict(args, store_root=str(store), registries_conf=reg.conf))


def blob(store, digest):
    return os.path.join(str(store), 'blobs', 'sha256', digest.split(':', 1)[1])


def stored_config(store, img):
    with open(blob(store, img['id'])) as f:
        return json.load(f)


def stored_layers(store, img):
    with open(blob(store, img['manifest'])) as f:
        return [blob(store, d['digest']) for d in json.load(f)['layers']]


def test_nginx_pulled_unmodified_with_docker_hub_config(registry, tmp_path):
    store = tmp_path / 'images'
    r = image(dict(name='nginx'), store, registry)
    assert r.changed and not r.failed, r
    img = r['image']
    assert img['repo_tags'] == ['docker.io/library/nginx:latest']
    assert img['repo_digest'].startswith('docker.io/library/nginx@sha256:')
    again = image(dict(name='docker.io/library/nginx:latest'), store, registry)
    assert not again.changed and not again.failed, again
    assert again['image']['id'] == img['id']

    cfg = stored_config(store, img)['config']
    assert cfg['Entrypoint'] == ['/docker-entrypoint.sh']
    assert cfg['Cmd'] == ['nginx', '-g', 'daemon off;']
    assert cfg['StopSignal'] == 'SIGQUIT'
    assert cfg['ExposedPorts'] == {'80/tcp': {}}
    env = dict(e.split('=', 1) for e in cfg['Env'])
    assert env['PATH'] == '/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin'
    assert env['NGINX_VERSION'][0].isdigit()
    listed = run_module('image_info', dict(store_root=str(store), name=['nginx']))
    assert [i['id'] for i in listed['images']] == [img['id']]

    # the tag of the documentation's pods/simple-pod.yaml: the same image, only a reference added
    nblobs = len(os.listdir(os.path.join(str(store), 'blobs', 'sha256')))
    doc = image(dict(name='nginx:1.14.2'), store, registry)
    assert doc.changed and not doc.failed, doc
    assert doc['pull_policy'] == 'IfNotPresent' and doc['image']['id'] == img['id']
    assert len(os.listdir(os.path.join(str(store), 'blobs', 'sha256'))) == nblobs


@pytest.mark.skipif(os.geteuid() != 0, reason='needs root (chroot, network and mount namespaces)')
def test_nginx_runs_from_the_stored_layers(registry, tmp_path):
    """Unpack what the store holds and run Entrypoint + Cmd with the image's Env in a chroot inside
    fresh net/pid/mount namespaces: `nginx -t` passes, the page answers on the namespace's loopback,
    and the image's StopSignal (SIGQUIT) ends nginx gracefully (exit status 0)."""
    store = tmp_path / 'images'
    r = image(dict(name='nginx'), store, registry)
    assert not r.failed, r
    cfg = stored_config(store, r['image'])['config']
    root = tmp_path / 'rootfs'
    root.mkdir()
    for layer in stored_layers(store, r['image']):
        subprocess.run(['tar', '-xzf', layer, '-C', str(root), '--numeric-owner'], check=True)
    argv = ' '.join(shlex.quote(a) for a in cfg['Entrypoint'] + cfg['Cmd'])
    env = ' '.join(shlex.quote(e) for e in cfg['Env'])
    test_argv = ' '.join(shlex.quote(a) for a in cfg['Entrypoint'] + ['nginx', '-t'])
    script = '''
set -u
R={root}
mount --bind /dev "$R/dev"
mount -t proc proc "$R/proc"
ip link set lo up
env -i {env} /usr/sbin/chroot "$R" {test_argv} || {{ echo "nginx -t failed"; exit 3; }}
env -i {env} /usr/sbin/chroot "$R" {argv} &
pid=$!
ok=""
for i in $(seq 100); do
  if /bin/busybox wget -q -O "$R/../page.html" http://127.0.0.1:80/; then ok=1; break; fi
  sleep 0.1
done
kill -{sig} "$pid"
wait "$pid"
echo "nginx exit=$?"
[ -n "$ok" ] || exit 4
'''.format(root=shlex.quote(str(root)), env=env, argv=argv, test_argv=test_argv, sig=cfg['StopSignal'][3:])
    # --kill-child: should the test time out, the namespace's init and with it nginx die with unshare
    p = subprocess.run(['unshare', '--net', '--pid', '--mount', '--fork', '--kill-child', '--mount-proc', '--propagation', 'private',
                        'sh', '-c', script], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=60)
    out = p.stdout.decode(errors='replace')
    assert p.returncode == 0, out
    assert 'nginx: the configuration file /etc/nginx/nginx.conf syntax is ok' in out
    assert 'nginx exit=0' in out, out
    with open(str(tmp_path / 'page.html')) as f:
        assert '<title>Welcome to nginx!</title>' in f.read()


def test_user_image_names_its_user(registry, tmp_path):
    store = tmp_path / 'images'
    r = image(dict(name='app-user'), store, registry)
    assert r.changed and not r.failed, r
    assert r['image']['repo_tags'] == ['docker.io/library/app-user:latest']
    cfg = stored_config(store, r['image'])['config']
    assert cfg['User'] == 'app'
    (layer,) = stored_layers(store, r['image'])
    with tarfile.open(layer) as tf:
        passwd = tf.extractfile('etc/passwd').read().decode()
        group = tf.extractfile('etc/group').read().decode()
    # what a runtime resolves User "app" to
    entry = [line.split(':') for line in passwd.splitlines() if line.startswith('app:')]
    assert [(e[2], e[3]) for e in entry] == [('1000', '1000')]
    assert 'app:x:1000:' in group.splitlines()


def test_nginx_image_is_reproducible(tmp_path):
    """Built again from the same packages, the layout is byte for byte the cached one: the cache
    key (recipe, architecture, package versions) names its content."""
    cached = nginx_layout()
    again = nginx_layout(cache=str(tmp_path / 'cache'))
    assert os.path.basename(again) == os.path.basename(cached)
    with open(os.path.join(cached, 'index.json')) as a, open(os.path.join(again, 'index.json')) as b:
        assert json.load(a) == json.load(b)
    assert [n for n in os.listdir(str(tmp_path / 'cache')) if n.startswith('.build-')] == []
