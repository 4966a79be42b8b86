# -*- coding: utf-8 -*-
# Copyright: barepod.linux developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Pulls through containers/image, by Debian's ``skopeo`` (no registry client of our own).

How a pull goes (as containerd's resolve-then-fetch):

1. ``skopeo inspect --raw docker://<name>:<tag>`` resolves the reference to the top manifest's
   bytes; their sha256 is the repo digest (an index for a multi-platform image). A reference
   pinned by digest must hash to that digest.
2. An index is resolved to this node's platform (linux/GOARCH, variant) by _imagestore.
3. ``skopeo copy --preserve-digests docker://<name>@<manifest digest> oci:<work dir>`` fetches by
   digest (so a tag moving meanwhile cannot mix two images), into a work directory of the store
   where the blobs the store already holds are hard linked first: skopeo reuses them and
   downloads only what is missing. skopeo verifies every blob's digest while reading it.
4. The store verifies every blob again (sha256 and size against the manifest), moves them in and
   then, last, points the reference at the image. A pull killed or failing at any step leaves
   no reference, so nothing a later pod would use; its work directory is cleared by the next writer.

containers/image configuration applies unchanged: /etc/containers/registries.conf (mirrors,
blocked registries, per-registry ``insecure``; ``registries_conf`` passes another file), the auth
file (``authfile``, else $REGISTRY_AUTH_FILE, else ${XDG_RUNTIME_DIR}/containers/auth.json and
~/.docker/config.json), /etc/containers/policy.json (``policy`` passes another). Reference short
names are normalised to docker.io as containerd does (not through unqualified-search-registries,
which CRI-O and podman use).
"""

from __future__ import annotations

import json
import os
import re
import subprocess

from ansible_collections.barepod.linux.plugins.module_utils._common import BarepodError, failpoint
from ansible_collections.barepod.linux.plugins.module_utils import _imageref
from ansible_collections.barepod.linux.plugins.module_utils import _imagestore as st

ERR_IMAGE_PULL = 'ErrImagePull'
ERR_IMAGE_NEVER_PULL = 'ErrImageNeverPull'
INVALID_IMAGE_NAME = 'InvalidImageName'
_LOGRUS = re.compile(r'time="[^"]*" level=\w+ msg="((?:[^"\\]|\\.)*)"')


class PullError(BarepodError):
    """A failed pull, worded as kubelet's ErrImagePull message."""

    def __init__(self, ref, message, reason=ERR_IMAGE_PULL):
        self.reason = reason
        self.detail = message
        super().__init__('Failed to pull image "%s": %s' % (ref, message), field='image', value=ref, reason=reason)


def never_pull_message(ref):
    """kubelet's ErrImageNeverPull message."""
    return 'Container image "%s" is not present with pull policy of Never' % ref


def skopeo_message(stderr):
    """The error skopeo (logrus) printed, unquoted; else its last line."""
    text = stderr.decode('utf-8', 'replace') if isinstance(stderr, bytes) else stderr
    msgs = _LOGRUS.findall(text)
    if msgs:
        try:
            return json.loads('"%s"' % msgs[-1])
        except ValueError:
            return msgs[-1]
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return lines[-1] if lines else 'skopeo failed'


class Puller(object):
    def __init__(self, store, registries_conf=None, authfile=None, tls_verify=None, policy=None,
                 platform=None, skopeo='skopeo', timeout=900, cert_dir=None):
        self.store = store
        self.registries_conf = registries_conf
        self.authfile = authfile
        self.tls_verify = tls_verify
        self.policy = policy
        self.platform = platform or st.host_platform()
        self.skopeo = skopeo
        self.timeout = timeout
        self.cert_dir = cert_dir

    def _global(self):
        argv = [self.skopeo]
        if self.registries_conf:
            argv += ['--registries-conf', self.registries_conf]
        if self.policy:
            argv += ['--policy', self.policy]
        return argv

    def _run(self, ref, argv):
        try:
            p = subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               timeout=self.timeout, check=False, close_fds=True)
        except OSError as e:
            raise PullError(ref, 'cannot run %s: %s' % (self.skopeo, e))
        except subprocess.TimeoutExpired:
            raise PullError(ref, 'skopeo took longer than %d seconds' % self.timeout)
        if p.returncode != 0:
            raise PullError(ref, skopeo_message(p.stderr))
        return p.stdout

    def _src_opts(self, flag):
        out = []
        if self.authfile:
            out += ['--authfile' if flag == 'inspect' else '--src-authfile', self.authfile]
        if self.cert_dir:
            out += ['--cert-dir' if flag == 'inspect' else '--src-cert-dir', self.cert_dir]
        if self.tls_verify is not None:
            out += ['--tls-verify=%s' % str(bool(self.tls_verify)).lower() if flag == 'inspect'
                    else '--src-tls-verify=%s' % str(bool(self.tls_verify)).lower()]
        return out

    def inspect_raw(self, user_ref, image):
        """The raw bytes of the manifest `image` (a string docker reference) points at."""
        return self._run(user_ref, self._global() + ['inspect', '--raw', '--retry-times', '2'] + self._src_opts('inspect')
                         + ['docker://' + image])

    def resolve(self, ref):
        """(target digest, parsed top manifest, raw bytes) of Reference `ref`."""
        user = ref.original or str(ref)
        raw = self.inspect_raw(user, ref.canonical)
        target = st.digest_bytes(raw)
        if ref.digest and target != ref.digest:
            raise PullError(user, 'digest mismatch: the registry served %s for %s' % (target, ref.canonical))
        try:
            doc = json.loads(raw.decode('utf-8'))
        except ValueError as e:
            raise PullError(user, 'manifest %s is not valid JSON: %s' % (target, e))
        if not isinstance(doc, dict):
            raise PullError(user, 'manifest %s is not a JSON object' % target)
        return target, doc, raw

    def platform_manifest(self, ref, target, doc):
        """The digest of the manifest for this node (the target itself unless it is an index)."""
        if doc.get('mediaType') in st.INDEX_TYPES or 'manifests' in doc:
            desc = st.choose_manifest(doc, self.platform)
            if desc is None:
                raise PullError(ref.original or str(ref), 'no match for platform in manifest %s: not found (want %s)'
                                % (target, st.platform_string(self.platform)))
            err = _imageref.validate_digest(desc.get('digest'))
            if err:
                raise PullError(ref.original or str(ref), 'index %s: bad digest %r: %s' % (target, desc.get('digest'), err))
            return desc['digest']
        return target

    def pull(self, ref, resolved=None):
        """Pull Reference `ref` into the store (call with the store's lock held); returns the
        image record. `resolved` is resolve()'s result when the caller already has it."""
        user = ref.original or str(ref)
        target, doc, raw = resolved or self.resolve(ref)
        manifest = self.platform_manifest(ref, target, doc)
        refs = self.store.refs()
        for rec in refs.values():
            if rec['target'] == target and rec['manifest'] == manifest and self.store.complete(rec):
                rec = dict(rec)
                self.store.commit(None, [ref.canonical], rec)
                return rec
        with self.store.ingest() as ing:
            layout = os.path.join(ing.path, 'layout')
            blobs = os.path.join(layout, 'blobs', 'sha256')
            os.makedirs(blobs)
            with open(os.path.join(layout, 'oci-layout'), 'w') as f:
                f.write('{"imageLayoutVersion": "1.0.0"}')
            with open(os.path.join(layout, 'index.json'), 'w') as f:
                f.write('{"schemaVersion": 2, "manifests": []}')
            extra = []
            if manifest != target:
                ing.add_bytes(raw, target, what='index')
                extra.append(target)
                mraw = self.inspect_raw(user, '%s@%s' % (ref.name, manifest))
                if st.digest_bytes(mraw) != manifest:
                    raise PullError(user, 'digest mismatch: the registry served %s for %s@%s'
                                    % (st.digest_bytes(mraw), ref.name, manifest))
            else:
                mraw = raw
            try:
                mdoc = json.loads(mraw.decode('utf-8'))
            except ValueError as e:
                raise PullError(user, 'manifest %s is not valid JSON: %s' % (manifest, e))
            # what the store has already: hard links, which skopeo's oci: destination reuses
            for desc in [mdoc.get('config') or {}] + list(mdoc.get('layers') or []):
                d = desc.get('digest') if isinstance(desc, dict) else None
                if d and not _imageref.validate_digest(d) and d.startswith('sha256:') and self.store.has_blob(d):
                    os.link(self.store.blob_path(d), os.path.join(blobs, d.split(':', 1)[1]))
            self._run(user, self._global() + ['copy', '--quiet', '--preserve-digests', '--retry-times', '2']
                      + self._src_opts('copy') + ['docker://%s@%s' % (ref.name, manifest), 'oci:%s:pull' % layout])
            failpoint('image-pull-copied')  # fetched, not yet verified nor moved into the store
            try:
                ing.add_bytes(mraw, manifest, what='manifest')
                for desc in [mdoc.get('config') or {}] + list(mdoc.get('layers') or []):
                    d = desc.get('digest')
                    ing.adopt(os.path.join(blobs, (d or ':').split(':', 1)[1]), d, desc.get('size'))
                rec = self.store.record_from_manifest(ing, target, manifest, 'registry', extra=extra)
            except BarepodError as e:
                raise PullError(user, e.msg)
            self.store.commit(ing, [ref.canonical], rec)
            return rec
