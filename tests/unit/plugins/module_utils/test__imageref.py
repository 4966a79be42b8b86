# -*- coding: utf-8 -*-
# Copyright: barepod.linux developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Image references against the cases of distribution/reference (normalize_test.go,
reference_test.go) and kubelet's InvalidImageName / pull-policy defaults."""

import pytest

from ansible_collections.barepod.linux.plugins.module_utils import _imageref as r

SHA = 'sha256:' + 'a' * 64


@pytest.mark.parametrize('ref,canonical', [
    ('nginx', 'docker.io/library/nginx:latest'),
    ('nginx:1.25', 'docker.io/library/nginx:1.25'),
    ('docker.io/nginx', 'docker.io/library/nginx:latest'),
    ('index.docker.io/nginx', 'docker.io/library/nginx:latest'),
    ('index.docker.io/library/nginx', 'docker.io/library/nginx:latest'),
    ('bitnami/redis:7', 'docker.io/bitnami/redis:7'),
    ('registry.k8s.io/pause:3.10', 'registry.k8s.io/pause:3.10'),
    ('registry.k8s.io/e2e-test-images/agnhost:2.39', 'registry.k8s.io/e2e-test-images/agnhost:2.39'),
    ('localhost/foo', 'localhost/foo:latest'),
    ('localhost:5000/foo/bar', 'localhost:5000/foo/bar:latest'),
    ('127.0.0.1:5000/busybox:1.36', '127.0.0.1:5000/busybox:1.36'),
    ('[::1]:5000/busybox', '[::1]:5000/busybox:latest'),
    ('myregistry:5000/x', 'myregistry:5000/x:latest'),
    ('Foo.example/bar', 'Foo.example/bar:latest'),  # a domain may be upper case
    ('FOO/bar', 'FOO/bar:latest'),  # an upper case first element is a domain
    ('a__b/c-d---e.f_g', 'docker.io/a__b/c-d---e.f_g:latest'),
    ('nginx@' + SHA, 'docker.io/library/nginx@' + SHA),
    ('nginx:1.25@' + SHA, 'docker.io/library/nginx@' + SHA),  # ParseDockerRef drops the tag
    ('nginx:Tag_1.x-y', 'docker.io/library/nginx:Tag_1.x-y'),
])
def test_normalise(ref, canonical):
    assert r.parse(ref).canonical == canonical
    assert r.invalid_image_name(ref) is None


def test_parts_and_familiar():
    p = r.parse('nginx:1.25@' + SHA)
    assert (p.domain, p.path, p.tag, p.digest) == ('docker.io', 'library/nginx', '1.25', SHA)
    assert str(p) == 'docker.io/library/nginx:1.25@' + SHA
    assert p.familiar == 'nginx:1.25@' + SHA
    assert r.parse('docker.io/bitnami/redis').familiar == 'bitnami/redis'
    assert r.parse('registry.k8s.io/pause:3.10').familiar == 'registry.k8s.io/pause:3.10'
    assert p.with_digest('sha256:' + 'b' * 64) == 'docker.io/library/nginx@sha256:' + 'b' * 64


@pytest.mark.parametrize('ref,reason', [
    ('', r.ERR_REFERENCE_INVALID_FORMAT),  # '' becomes docker.io/library/, as upstream
    ('Nginx', 'invalid reference format: repository name (library/Nginx) must be lowercase'),
    ('BUSYBOX', 'invalid reference format: repository name (library/BUSYBOX) must be lowercase'),
    ('docker.io/Library/nginx', 'invalid reference format: repository name (Library/nginx) must be lowercase'),
    ('nginx:', r.ERR_REFERENCE_INVALID_FORMAT),
    ('nginx:-bad', r.ERR_REFERENCE_INVALID_FORMAT),
    ('nginx:' + 'a' * 129, r.ERR_REFERENCE_INVALID_FORMAT),
    ('ngi nx', r.ERR_REFERENCE_INVALID_FORMAT),
    ('nginx/', r.ERR_REFERENCE_INVALID_FORMAT),
    ('/nginx', r.ERR_REFERENCE_INVALID_FORMAT),
    ('nginx//x', r.ERR_REFERENCE_INVALID_FORMAT),
    ('-nginx', r.ERR_REFERENCE_INVALID_FORMAT),
    ('nginx_', r.ERR_REFERENCE_INVALID_FORMAT),
    ('a___b', r.ERR_REFERENCE_INVALID_FORMAT),
    ('nginx@sha256:abc', r.ERR_REFERENCE_INVALID_FORMAT),  # fewer than 32 hex digits
    ('nginx@sha256:' + 'a' * 32, r.ERR_DIGEST_INVALID_LENGTH),
    ('nginx@sha256:' + 'A' * 64, r.ERR_DIGEST_INVALID_FORMAT),
    ('nginx@md5:' + 'a' * 32, r.ERR_DIGEST_UNSUPPORTED),
    ('a' * 64, 'invalid repository name (%s), cannot specify 64-byte hexadecimal strings' % ('a' * 64)),
    ('x/' + 'a' * 254, r.ERR_NAME_TOO_LONG),
    ('https://registry.example/nginx', r.ERR_REFERENCE_INVALID_FORMAT),
])
def test_refused(ref, reason):
    with pytest.raises(r.ImageRefError) as e:
        r.parse(ref)
    assert e.value.reason == reason
    assert e.value.field == 'image'
    assert r.invalid_image_name(ref) == (
        'Failed to apply default image tag "%s": couldn\'t parse image reference "%s": %s' % (ref, ref, reason))


def test_kubelet_message_for_capitals():
    # as `kubectl describe` shows it for image: BUSYBOX (older wording had no name in parentheses)
    msg = r.invalid_image_name('BUSYBOX')
    assert msg.startswith('Failed to apply default image tag "BUSYBOX": couldn\'t parse image reference "BUSYBOX": '
                          'invalid reference format: repository name')
    assert msg.endswith('must be lowercase')


def test_non_string_refused():
    with pytest.raises(r.ImageRefError):
        r.parse(None)


@pytest.mark.parametrize('ref,policy', [
    ('nginx', 'Always'),
    ('nginx:latest', 'Always'),
    ('nginx:1.25', 'IfNotPresent'),
    ('nginx@' + SHA, 'IfNotPresent'),
    ('nginx:1.25@' + SHA, 'IfNotPresent'),
    ('nginx:latest@' + SHA, 'Always'),  # the tag decides, as SetDefaults_Container reads it
    ('localhost:5000/x', 'Always'),
])
def test_default_pull_policy(ref, policy):
    assert r.default_pull_policy(ref) == policy
    assert r.pull_policy(ref) == policy
    assert r.pull_policy(ref, 'Never') == 'Never'


def test_pull_policy_refused():
    with pytest.raises(r.BarepodError) as e:
        r.pull_policy('nginx', 'Sometimes')
    assert 'imagePullPolicy' in str(e.value) and 'Sometimes' in str(e.value)


@pytest.mark.parametrize('ref,out', [
    ('busybox', 'busybox:latest'),
    ('busybox:1.36', 'busybox:1.36'),
    ('busybox@' + SHA, 'busybox@' + SHA),
    ('localhost:5000/busybox', 'localhost:5000/busybox:latest'),
])
def test_with_default_tag(ref, out):
    assert r.with_default_tag(ref) == out


@pytest.mark.parametrize('digest,err', [
    (SHA, None),
    ('sha512:' + 'b' * 128, None),
    ('sha256:', r.ERR_DIGEST_INVALID_FORMAT),
    (':' + 'a' * 64, r.ERR_DIGEST_INVALID_FORMAT),
    ('sha256' + 'a' * 64, r.ERR_DIGEST_INVALID_FORMAT),
    ('sha256:' + 'g' * 64, r.ERR_DIGEST_INVALID_FORMAT),
    ('sha256:' + 'a' * 63, r.ERR_DIGEST_INVALID_LENGTH),
    ('foo:' + 'a' * 64, r.ERR_DIGEST_UNSUPPORTED),
    ('sha256:../../etc/passwd', r.ERR_DIGEST_INVALID_LENGTH),
])
def test_validate_digest(digest, err):
    assert r.validate_digest(digest) == err
