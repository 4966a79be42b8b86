# -*- coding: utf-8 -*-
# Copyright: barepod.linux developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The pod record: the one place every module writes what it built for a pod.

Layout (DESIGN.md, "The pod on disk"):

    <state_root>/<namespace>_<name>/record.json   sections written by each module
    <state_root>/<namespace>_<name>/status.json   the pod's status as Kubernetes reports it
    <state_root>/<namespace>_<name>/.lock         flock taken around read-modify-write

Each module owns one top-level section of record.json ('sandbox', 'rootfs', 'cgroups',
'network', 'containers', ...) and replaces only that section. Writes are atomic (rename)
and skipped when the bytes would not change, so a converged second run writes nothing.
"""

from __future__ import annotations

import errno
import json
import os
import shutil

from ansible_collections.barepod.linux.plugins.module_utils import _defaults
from ansible_collections.barepod.linux.plugins.module_utils._common import (
    BarepodError, dump_json, exclusive_lock, write_if_changed, validate_dns_label, validate_dns_subdomain)


RECORD_FILE = 'record.json'
STATUS_FILE = 'status.json'
LOCK_FILE = '.lock'


def pod_key(namespace, name):
    validate_dns_label('namespace', namespace)
    validate_dns_subdomain('name', name)
    return '%s_%s' % (namespace, name)


def netns_name(uid):
    """Name of the sandbox's netns bind mount under /run/netns: barepod-<first 8 of uid>."""
    return 'barepod-%s' % uid.replace('-', '')[:8]


def netns_path(uid, netns_dir=_defaults.NETNS_DIR):
    return os.path.join(netns_dir, netns_name(uid))


def log_dir(namespace, name, uid, container, log_root=_defaults.LOG_ROOT):
    """/var/log/pods/<ns>_<name>_<uid>/<container>/ as kubelet lays it out."""
    return os.path.join(log_root, '%s_%s_%s' % (namespace, name, uid), container)


def rootfs_dir(uid, container, rootfs_root=_defaults.ROOTFS_ROOT):
    return os.path.join(rootfs_root, uid, container)


class PodRecord(object):
    """Read and update one pod's record under a state root."""

    def __init__(self, namespace, name, state_root=_defaults.STATE_ROOT):
        self.namespace = namespace
        self.name = name
        self.key = pod_key(namespace, name)
        self.state_root = state_root
        self.path = os.path.join(state_root, self.key)

    @property
    def record_path(self):
        return os.path.join(self.path, RECORD_FILE)

    @property
    def status_path(self):
        return os.path.join(self.path, STATUS_FILE)

    def exists(self):
        return os.path.isfile(self.record_path)

    def load(self):
        """The record as a dict ({} when there is none)."""
        try:
            with open(self.record_path, 'r') as f:
                return json.load(f)
        except (IOError, OSError) as e:
            if e.errno in (errno.ENOENT, errno.ENOTDIR):
                return {}
            raise
        except ValueError as e:
            raise BarepodError('pod record %s is corrupt: %s' % (self.record_path, e))

    def section(self, name, default=None):
        return self.load().get(name, default)

    def lock(self):
        if not os.path.isdir(self.path):
            os.makedirs(self.path, 0o700, exist_ok=True)
        return exclusive_lock(os.path.join(self.path, LOCK_FILE), 0o600)

    def would_change(self, section, value):
        return self.load().get(section) != value

    def update(self, section, value, uid=None):
        """Replace one section (None deletes it). Returns True when the file was written."""
        with self.lock():
            rec = self.load()
            if uid is not None:
                if rec.get('uid') not in (None, uid):
                    raise BarepodError(
                        'pod %s already exists with uid %s, not %s' % (self.key, rec.get('uid'), uid),
                        field='uid', value=uid)
                rec['uid'] = uid
            rec.setdefault('namespace', self.namespace)
            rec.setdefault('name', self.name)
            if value is None:
                rec.pop(section, None)
            else:
                rec[section] = value
            return write_if_changed(self.record_path, dump_json(rec), 0o600)

    def load_status(self):
        try:
            with open(self.status_path, 'r') as f:
                return json.load(f)
        except (IOError, OSError, ValueError):
            return {}

    def write_status(self, status):
        with self.lock():
            return write_if_changed(self.status_path, dump_json(status), 0o644)

    def remove(self):
        """Delete the record directory; True when something was removed."""
        if not os.path.exists(self.path):
            return False
        shutil.rmtree(self.path, ignore_errors=True)
        return True


def list_records(state_root=_defaults.STATE_ROOT):
    """Every pod record under state_root, as dicts."""
    out = []
    try:
        names = sorted(os.listdir(state_root))
    except OSError:
        return out
    for entry in names:
        if '_' not in entry:
            continue
        p = os.path.join(state_root, entry, RECORD_FILE)
        try:
            with open(p, 'r') as f:
                out.append(json.load(f))
        except (IOError, OSError, ValueError):
            continue
    return out
