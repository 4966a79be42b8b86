"""Kubelet's QoS class and resource mappings, table driven (sources cited in _qos.py)."""
import pytest

from ansible_collections.barepod.linux.plugins.module_utils._common import BarepodError
from ansible_collections.barepod.linux.plugins.module_utils._qos import (
    BEST_EFFORT, BURSTABLE, GUARANTEED, container_config, millicpu_to_quota, millicpu_to_shares,
    normalise_containers, pod_config, qos_class, shares_to_weight, shares_to_weight_linear)


@pytest.mark.parametrize('milli,shares', [
    (0, 2), (1, 2), (2, 2), (3, 3), (10, 10), (250, 256), (500, 512), (1000, 1024), (1500, 1536),
    (100000, 102400), (256000, 262144), (300000, 262144), (10 ** 9, 262144)])
def test_shares(milli, shares):
    assert millicpu_to_shares(milli) == shares


@pytest.mark.parametrize('milli,period,quota', [
    (0, 100000, 0), (1, 100000, 1000), (5, 100000, 1000), (10, 100000, 1000), (11, 100000, 1100),
    (250, 100000, 25000), (1500, 100000, 150000), (250, 50000, 12500), (1, 1000000, 1000),
    (4000, 100000, 400000)])
def test_quota(milli, period, quota):
    assert millicpu_to_quota(milli, period) == quota


@pytest.mark.parametrize('shares,weight', [
    (0, 0), (1, 1), (2, 1), (3, 2), (1024, 100), (262144, 10000), (300000, 10000), (256, 35), (512, 59),
    (2048, 174)])
def test_weight_quadratic(shares, weight):
    assert shares_to_weight(shares) == weight


def test_weight_monotonic_and_bounded():
    prev = 0
    for s in range(2, 262145, 97):
        w = shares_to_weight(s)
        assert 1 <= w <= 10000 and w >= prev
        prev = w


def test_weight_linear_reference():
    assert shares_to_weight_linear(1024) == 39
    assert shares_to_weight_linear(2) == 1 and shares_to_weight_linear(262144) == 10000


def C(name='c', requests=None, limits=None):
    return {'name': name, 'resources': {'requests': requests or {}, 'limits': limits or {}}}


QOS = [
    ([C()], BEST_EFFORT),
    ([C(requests={'memory': '100Mi'}, limits={'memory': '200Mi'})], BURSTABLE),      # greedy-pod.yaml
    ([C(limits={'memory': '1Gi', 'cpu': '1'})], GUARANTEED),                           # requests defaulted
    ([C(requests={'memory': '1Gi', 'cpu': '1'}, limits={'memory': '1Gi', 'cpu': '1'})], GUARANTEED),
    ([C(requests={'memory': '1Gi', 'cpu': '500m'}, limits={'memory': '1Gi', 'cpu': '1'})], BURSTABLE),
    ([C(limits={'memory': '1Gi', 'cpu': '1'}), C('b')], BURSTABLE),
    ([C(limits={'memory': '1Gi', 'cpu': '1'}), C('b', limits={'memory': '1Gi', 'cpu': '1000m'})], GUARANTEED),
    ([C(requests={'ephemeral-storage': '1Gi'})], BEST_EFFORT),                         # only cpu/memory count
    ([C(limits={'cpu': '1'})], BURSTABLE),
    ([C(requests={'cpu': '0'})], BEST_EFFORT),                                         # zero is not a request
]


@pytest.mark.parametrize('containers,expected', QOS)
def test_qos(containers, expected):
    assert qos_class(normalise_containers(containers)) == expected


def test_pod_config_greedy_pod():
    cfg = pod_config(normalise_containers(
        [C(requests={'memory': '100Mi'}, limits={'memory': '200Mi'})]))
    assert cfg == {'qos_class': BURSTABLE, 'cpu_shares': 2, 'cpu_quota': None, 'cpu_period': 100000,
                   'memory_limit': 200 * 2 ** 20}


def test_pod_config_guaranteed_sums():
    cfg = pod_config(normalise_containers([C(limits={'memory': '1Gi', 'cpu': '250m'}),
                                           C('b', limits={'memory': '1Gi', 'cpu': '250m'})]))
    assert cfg['qos_class'] == GUARANTEED
    assert cfg['cpu_shares'] == 512 and cfg['cpu_quota'] == 50000 and cfg['memory_limit'] == 2 ** 31


def test_pod_config_burstable_partial_limits():
    cfg = pod_config(normalise_containers([C(limits={'memory': '1Gi', 'cpu': '1'}),
                                           C('b', requests={'cpu': '100m'})]))
    assert cfg['qos_class'] == BURSTABLE
    assert cfg['cpu_quota'] is None and cfg['memory_limit'] is None
    assert cfg['cpu_shares'] == millicpu_to_shares(1100)


def test_pod_config_besteffort():
    cfg = pod_config(normalise_containers([C()]))
    assert cfg['qos_class'] == BEST_EFFORT and cfg['cpu_shares'] == 2 and cfg['memory_limit'] is None


def test_container_config():
    c = normalise_containers([C(requests={'cpu': '0.1m'}, limits={'cpu': '0.1m', 'memory': '10'})])[0]
    assert container_config(c) == {'cpu_shares': 2, 'cpu_quota': 1000, 'cpu_period': 100000, 'memory_limit': 10}


@pytest.mark.parametrize('containers,field', [
    ([C(limits={'memory': '10Mx'})], 'containers[0].resources.limits.memory'),
    ([C(requests={'cpu': '2'}, limits={'cpu': '1'})], 'containers[0].resources.requests.cpu'),
    (['nope'], 'containers[0]'),
    ([{'name': 'a', 'resources': {'limits': 'x'}}], 'containers[0].resources.limits'),
])
def test_bad_containers(containers, field):
    with pytest.raises(BarepodError) as e:
        normalise_containers(containers)
    assert field in str(e.value)
