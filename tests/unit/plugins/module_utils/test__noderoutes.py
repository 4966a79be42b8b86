"""_noderoutes: node_routes' input checks (the routes themselves: tests/integration/test_veth_net.py)."""

import pytest

from ansible_collections.barepod.linux.plugins.module_utils._common import BarepodError
from ansible_collections.barepod.linux.plugins.module_utils._noderoutes import NodeRoutes


@pytest.mark.parametrize('nodes', [
    [dict(name='a', pod_cidr='10.244.0.0/33', node_ip='1.1.1.1')],
    [dict(name='a', pod_cidr='10.244.0.0/24', node_ip='nope')],
    [dict(name='a', pod_cidr='10.244.0.0/24')],
    [dict(name='a', pod_cidr='10.244.0.0/24', node_ip='1.1.1.1'),
     dict(name='b', pod_cidr='10.244.0.0/24', node_ip='1.1.1.2')],
])
def test_node_routes_bad_input(nodes):
    with pytest.raises(BarepodError) as e:
        NodeRoutes(dict(nodes=nodes))
    assert 'nodes[' in str(e.value)
