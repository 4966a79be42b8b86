# -*- coding: utf-8 -*-
# Copyright: barepod.linux developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The defaults the modules, the filters and the roles share, each in one place.

The module_utils import these; the argument specs (_specs) use them; the pod filter's role
defaults (filter/pod.py) are ROLE_DEFAULTS. The module docs (DOCUMENTATION) and the roles'
defaults/main.yml and meta/argument_specs.yml are YAML and cannot import: the unit test
tests/unit/plugins/module_utils/test__defaults.py holds them to these values, so a default
changed in one place and not the others fails a test.
"""

from __future__ import annotations

# where state lives (DESIGN.md, "The pod on disk")
STATE_ROOT = '/run/barepod/pods'
NETNS_DIR = '/run/netns'
ROOTFS_ROOT = '/var/lib/barepod/rootfs'
LOG_ROOT = '/var/log/pods'
CNI_DATA_DIR = '/var/lib/cni/networks'
PAUSE_DIR = '/var/lib/barepod/pause'

# cgroups (kubelet's cgroupfs layout)
CGROUP_ROOT = '/sys/fs/cgroup'
CGROUP_PARENT = 'kubepods'
MOUNTINFO = '/proc/self/mountinfo'

# the pod network (the CNI bridge + host-local configuration of a single node)
NETWORK = 'barepod'
SUBNET = '10.244.0.0/24'
BRIDGE = 'cni0'
IFNAME = 'eth0'
MTU = 1500

# the pod (terminationGracePeriodSeconds when the manifest has none)
GRACE_PERIOD = 30

# The pod role's settings (its pod_<key> variables) that have a shared default: key -> default.
ROLE_DEFAULTS = dict(
    network=NETWORK, subnet=SUBNET, bridge=BRIDGE, mtu=MTU,
    cgroup_parent=CGROUP_PARENT, cgroup_root=CGROUP_ROOT,
    state_root=STATE_ROOT, netns_dir=NETNS_DIR, rootfs_root=ROOTFS_ROOT, log_root=LOG_ROOT,
    cni_data_dir=CNI_DATA_DIR, grace_period=GRACE_PERIOD,
)
