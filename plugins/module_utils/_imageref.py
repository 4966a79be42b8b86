# -*- coding: utf-8 -*-
# Copyright: barepod.linux developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Image references, normalised as containerd and the distribution reference library do.

Pure (no I/O). The grammar is the one of github.com/distribution/reference::

    reference        := name [ ":" tag ] [ "@" digest ]
    name             := [domain '/'] path-component ['/' path-component]*
    domain           := host [':' port-number]       (a DNS name, or an [IPv6] literal)
    path-component   := [a-z0-9]+ ( ( [._] | __ | -+ ) [a-z0-9]+ )*
    tag              := [A-Za-z0-9_][A-Za-z0-9_.-]{0,127}
    digest           := algorithm ":" hex            (hex validated per algorithm, like go-digest)

Normalisation (``ParseNormalizedNamed``): the first path element is a domain when it holds a
``.`` or ``:``, is ``localhost``, or is not lower case; otherwise the domain is ``docker.io``.
``index.docker.io`` is ``docker.io``; a one-element Docker Hub name gets ``library/``. A reference
without tag or digest means ``:latest``. Errors carry upstream's wording, and ``invalid_image_name``
words them as kubelet's InvalidImageName message does.
"""

from __future__ import annotations

import re

from ansible_collections.barepod.linux.plugins.module_utils._common import BarepodError

DEFAULT_DOMAIN = 'docker.io'
LEGACY_DEFAULT_DOMAIN = 'index.docker.io'
OFFICIAL_REPO_PREFIX = 'library/'
DEFAULT_TAG = 'latest'
NAME_TOTAL_LENGTH_MAX = 255

_ALNUM = r'[a-z0-9]+'
_SEPARATOR = r'(?:[._]|__|[-]+)'
_PATH_COMPONENT = _ALNUM + r'(?:' + _SEPARATOR + _ALNUM + r')*'
_DOMAIN_COMPONENT = r'(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])'
_DOMAIN_NAME = _DOMAIN_COMPONENT + r'(?:\.' + _DOMAIN_COMPONENT + r')*'
_IPV6 = r'\[(?:[a-fA-F0-9:]+)\]'
_DOMAIN = r'(?:' + _DOMAIN_NAME + r'|' + _IPV6 + r')(?::[0-9]+)?'
_TAG = r'[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}'
_DIGEST = r'[A-Za-z][A-Za-z0-9]*(?:[-_+.][A-Za-z][A-Za-z0-9]*)*:[0-9a-fA-F]{32,}'
_NAME = r'(?:(' + _DOMAIN + r')/)?(' + _PATH_COMPONENT + r'(?:/' + _PATH_COMPONENT + r')*)'

REFERENCE_RE = re.compile(r'^(' + _NAME + r')(?::(' + _TAG + r'))?(?:@(' + _DIGEST + r'))?\Z', re.ASCII)
NAME_RE = re.compile(r'^' + _NAME + r'\Z', re.ASCII)
TAG_RE = re.compile(r'^' + _TAG + r'\Z', re.ASCII)
IDENTIFIER_RE = re.compile(r'^[a-f0-9]{64}\Z')

# the algorithms go-digest registers (kubelet links sha256 and sha512; sha384 comes with them)
DIGEST_HEX_LEN = {'sha256': 64, 'sha384': 96, 'sha512': 128}
_DIGEST_ANCHORED = re.compile(r'^' + _DIGEST + r'\Z', re.ASCII)
_HEX_LOWER = re.compile(r'^[a-f0-9]+\Z')

ERR_REFERENCE_INVALID_FORMAT = 'invalid reference format'
ERR_NAME_CONTAINS_UPPERCASE = 'repository name must be lowercase'
ERR_NAME_EMPTY = 'repository name must have at least one component'
ERR_NAME_TOO_LONG = 'repository name must not be more than %d characters' % NAME_TOTAL_LENGTH_MAX
ERR_DIGEST_INVALID_FORMAT = 'invalid checksum digest format'
ERR_DIGEST_INVALID_LENGTH = 'invalid checksum digest length'
ERR_DIGEST_UNSUPPORTED = 'unsupported digest algorithm'

PULL_ALWAYS = 'Always'
PULL_IF_NOT_PRESENT = 'IfNotPresent'
PULL_NEVER = 'Never'
PULL_POLICIES = (PULL_ALWAYS, PULL_IF_NOT_PRESENT, PULL_NEVER)


class ImageRefError(BarepodError):
    """A reference the runtime refuses; ``reason`` is upstream's error text alone."""

    def __init__(self, reason, ref, field='image'):
        self.reason = reason
        self.ref = ref
        super().__init__('%s: %s' % (reason, ref if isinstance(ref, str) else repr(ref)), field=field, value=ref)


def validate_digest(digest):
    """go-digest's Digest.Validate: the upstream error text, or None when the digest is valid."""
    if not isinstance(digest, str):
        return ERR_DIGEST_INVALID_FORMAT
    i = digest.find(':')
    if i <= 0 or i + 1 == len(digest):
        return ERR_DIGEST_INVALID_FORMAT
    alg, hexd = digest[:i], digest[i + 1:]
    if alg not in DIGEST_HEX_LEN:
        return ERR_DIGEST_UNSUPPORTED if _DIGEST_ANCHORED.match(digest) else ERR_DIGEST_INVALID_FORMAT
    if len(hexd) != DIGEST_HEX_LEN[alg]:
        return ERR_DIGEST_INVALID_LENGTH
    if not _HEX_LOWER.match(hexd):
        return ERR_DIGEST_INVALID_FORMAT
    return None


def check_digest(digest, field='digest'):
    err = validate_digest(digest)
    if err:
        raise ImageRefError(err, digest, field=field)
    return digest


class Reference(object):
    """A parsed, normalised reference: domain, path, tag (may be None), digest (may be None)."""

    __slots__ = ('original', 'domain', 'path', 'tag', 'digest')

    def __init__(self, domain, path, tag=None, digest=None, original=None):
        self.domain = domain
        self.path = path
        self.tag = tag
        self.digest = digest
        self.original = original

    @property
    def name(self):
        """domain/path: the repository (``docker.io/library/nginx``)."""
        return self.domain + '/' + self.path

    def __str__(self):
        s = self.name
        if self.tag:
            s += ':' + self.tag
        if self.digest:
            s += '@' + self.digest
        return s

    def __repr__(self):
        return 'Reference(%r)' % str(self)

    def __eq__(self, other):
        return isinstance(other, Reference) and str(self) == str(other)

    def __ne__(self, other):
        return not self.__eq__(other)

    def __hash__(self):
        return hash(str(self))

    @property
    def canonical(self):
        """What the store indexes (containerd's ParseDockerRef): ``name@digest`` when digested
        (a tag beside a digest is dropped), else ``name:tag`` with ``latest`` by default."""
        if self.digest:
            return '%s@%s' % (self.name, self.digest)
        return '%s:%s' % (self.name, self.tag or DEFAULT_TAG)

    @property
    def familiar(self):
        """The short form the Docker UI shows (``nginx:latest``, ``bitnami/redis``)."""
        domain, path = self.domain, self.path
        if domain == DEFAULT_DOMAIN:
            rest = path[len(OFFICIAL_REPO_PREFIX):] if path.startswith(OFFICIAL_REPO_PREFIX) else None
            s = rest if rest is not None and '/' not in rest else path
        else:
            s = domain + '/' + path
        if self.tag:
            s += ':' + self.tag
        if self.digest:
            s += '@' + self.digest
        return s

    def with_digest(self, digest):
        """The repo digest of this repository (``docker.io/library/nginx@sha256:...``)."""
        check_digest(digest)
        return '%s@%s' % (self.name, digest)

    def default_pull_policy(self):
        return default_pull_policy(self)


def split_docker_domain(name):
    """splitDockerDomain: (domain, remainder) of a name (tag/digest still attached)."""
    if '/' not in name:
        return DEFAULT_DOMAIN, OFFICIAL_REPO_PREFIX + name
    first, rest = name.split('/', 1)
    if first == 'localhost':
        domain, remainder = first, rest
    elif first == LEGACY_DEFAULT_DOMAIN:
        domain, remainder = DEFAULT_DOMAIN, rest
    elif '.' in first or ':' in first:
        domain, remainder = first, rest
    elif first.lower() != first:
        # upper case namespaces are not allowed, so an upper case first element is a domain
        domain, remainder = first, rest
    else:
        domain, remainder = DEFAULT_DOMAIN, name
    if domain == DEFAULT_DOMAIN and '/' not in remainder:
        remainder = OFFICIAL_REPO_PREFIX + remainder
    return domain, remainder


def _parse(s):
    """reference.Parse of an already domain-qualified string -> (domain, path, tag, digest)."""
    if s == '':
        raise ImageRefError(ERR_NAME_EMPTY, s)
    m = REFERENCE_RE.match(s)
    if m is None:
        low = s.lower()
        if low != s and REFERENCE_RE.match(low):
            raise ImageRefError(ERR_NAME_CONTAINS_UPPERCASE, s)
        raise ImageRefError(ERR_REFERENCE_INVALID_FORMAT, s)
    _name, domain, path, tag, digest = m.groups()
    if len(path) > NAME_TOTAL_LENGTH_MAX:
        raise ImageRefError(ERR_NAME_TOO_LONG, s)
    if digest:
        err = validate_digest(digest)
        if err:
            raise ImageRefError(err, s)
    return domain, path, tag, digest


def parse(ref, field='image'):
    """ParseNormalizedNamed: a user's reference (``nginx``, ``registry.k8s.io/pause:3.10``,
    ``name:tag@sha256:...``) -> Reference; ImageRefError (a BarepodError) when refused."""
    if not isinstance(ref, str):
        raise ImageRefError(ERR_REFERENCE_INVALID_FORMAT, ref, field=field)
    try:
        if IDENTIFIER_RE.match(ref):
            raise ImageRefError('invalid repository name (%s), cannot specify 64-byte hexadecimal strings' % ref, ref)
        domain, remainder = split_docker_domain(ref)
        remote = remainder.split(':', 1)[0]
        if remote.lower() != remote:
            raise ImageRefError('invalid reference format: repository name (%s) must be lowercase' % remote, ref)
        d, path, tag, digest = _parse(domain + '/' + remainder)
    except ImageRefError as e:
        raise ImageRefError(e.reason, ref, field=field)
    if d is None:  # the domain went into the path: cannot happen after split_docker_domain
        raise ImageRefError(ERR_REFERENCE_INVALID_FORMAT, ref, field=field)
    return Reference(d, path, tag, digest, original=ref)


def invalid_image_name(ref):
    """kubelet's InvalidImageName message for `ref`, or None when kubelet accepts it
    (applyDefaultImageTag -> parsers.ParseImageName -> ParseNormalizedNamed)."""
    try:
        parse(ref)
    except ImageRefError as e:
        return 'Failed to apply default image tag "%s": couldn\'t parse image reference "%s": %s' % (ref, ref, e.reason)
    return None


def with_default_tag(ref):
    """applyDefaultImageTag: the reference as the user wrote it, plus ``:latest`` when it has
    neither tag nor digest (it is not qualified, so the CRI sees the short name)."""
    r = ref if isinstance(ref, Reference) else parse(ref)
    if not r.digest and not r.tag:
        return r.original + ':' + DEFAULT_TAG if r.original else r.canonical
    return r.original or str(r)


def default_pull_policy(ref):
    """SetDefaults_Container: ``Always`` when the tag is ``latest`` (no tag and no digest means
    ``latest``), ``IfNotPresent`` otherwise (a digest without a tag included). A tag beside a
    digest counts as the tag, as in Kubernetes (``nginx:latest@sha256:...`` is Always)."""
    r = ref if isinstance(ref, Reference) else parse(ref)
    tag = r.tag
    if not tag and not r.digest:
        tag = DEFAULT_TAG
    return PULL_ALWAYS if tag == DEFAULT_TAG else PULL_IF_NOT_PRESENT


def pull_policy(ref, policy=None, field='imagePullPolicy'):
    """The effective policy: the given one (validated) or Kubernetes' default for `ref`."""
    if policy in (None, ''):
        return default_pull_policy(ref)
    if policy not in PULL_POLICIES:
        raise BarepodError('unsupported value %r: supported values: "Always", "IfNotPresent", "Never"' % (policy,),
                           field=field, value=policy)
    return policy
