"""Table-driven tests of Kubernetes quantity parsing (k8s.io/apimachinery resource.Quantity)."""
from fractions import Fraction

import pytest

from ansible_collections.barepod.linux.plugins.module_utils._common import BarepodError
from ansible_collections.barepod.linux.plugins.module_utils._quantity import (
    parse_quantity, to_bytes, to_milli)

BYTES = [
    ('100Mi', 104857600),
    ('1G', 10 ** 9),
    ('128974848', 128974848),
    ('129e6', 129000000),
    ('129E6', 129000000),
    ('129M', 129000000),
    ('123Mi', 128974848),
    ('1Ki', 1024),
    ('1k', 1000),
    ('0.5Gi', 536870912),
    ('1.1', 2),            # Value() rounds up
    ('1u', 1),
    ('1n', 1),
    ('0', 0),
    ('+5', 5),
    ('-0', 0),
    ('1Ei', 2 ** 60),
    ('8E', 8 * 10 ** 18),
    ('1e0', 1),
    ('12e-1', 2),
    (128974848, 128974848),   # YAML ints
]

MILLI = [
    ('250m', 250),
    ('1.5', 1500),
    ('0.1', 100),
    ('0.1m', 1),       # MilliValue() rounds up: a fraction of a millicore is 1m
    ('1.5m', 2),
    ('0.0001', 1),
    ('1e-3', 1),
    ('1e3', 1000000),
    ('.5', 500),
    ('5.', 5000),
    ('2', 2000),
    ('100u', 1),
    ('1000000n', 1),
    (0.5, 500),
    (2, 2000),
]

BAD = [' 64Mi', '64Mi ', '10Mx', '-1', '-1Mi', '1.5.3', '', ' ', 'Mi', '1e', '1K', 'abc', '1 Mi', '1E+', '.', '--1',
       '1e1000',
       True, None, [], '0x10', '1mi', '1MB']


@pytest.mark.parametrize('text,expected', BYTES)
def test_bytes(text, expected):
    assert to_bytes(text) == expected


@pytest.mark.parametrize('text,expected', MILLI)
def test_milli(text, expected):
    assert to_milli(text) == expected


@pytest.mark.parametrize('text', BAD)
def test_bad(text):
    with pytest.raises(BarepodError) as e:
        parse_quantity(text, field='resources.limits.memory')
    assert 'resources.limits.memory' in str(e.value)


def test_error_names_value_and_reason():
    with pytest.raises(BarepodError) as e:
        to_bytes('10Mx', 'memory_limit')
    msg = str(e.value)
    assert "'10Mx'" in msg and 'suffix' in msg and msg.startswith('memory_limit')
    with pytest.raises(BarepodError) as e:
        to_bytes('-1', 'memory_limit')
    assert 'negative' in str(e.value)


def test_exact_fraction():
    assert parse_quantity('1.5Gi') == Fraction(3 * 2 ** 29)
    assert parse_quantity('0.1') == Fraction(1, 10)


def test_too_large():
    with pytest.raises(BarepodError):
        to_bytes('16Ei')


try:
    from hypothesis import given, strategies as st
except ImportError:  # pragma: no cover
    given = None

if given is not None:
    SUFFIXES = {'': 1, 'k': 10 ** 3, 'M': 10 ** 6, 'G': 10 ** 9, 'Ki': 2 ** 10, 'Mi': 2 ** 20, 'Gi': 2 ** 30}

    @given(st.integers(min_value=0, max_value=10 ** 6), st.sampled_from(sorted(SUFFIXES)))
    def test_integer_with_suffix(n, suffix):
        assert to_bytes('%d%s' % (n, suffix)) == n * SUFFIXES[suffix]

    @given(st.integers(min_value=0, max_value=10 ** 9), st.integers(min_value=0, max_value=6))
    def test_milli_rounds_up(n, digits):
        # n / 10**digits cores: millicores rounded up, as MilliValue() does
        text = '%d' % n if digits == 0 else '%d.%0*d' % (n // 10 ** digits, digits, n % 10 ** digits)
        assert to_milli(text) == -((-n * 1000) // 10 ** digits)
