# -*- coding: utf-8 -*-
# Copyright: barepod.linux developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Kubernetes resource quantities, parsed the way the API server parses them.

Source: k8s.io/apimachinery/pkg/api/resource/quantity.go (ParseQuantity,
parseQuantityString, Quantity.Value, Quantity.MilliValue) and suffix.go.

Grammar (quantity.go):

    <quantity>        ::= <signedNumber><suffix>
    <signedNumber>    ::= <number> | +<number> | -<number>
    <number>          ::= <digits> | <digits>.<digits> | <digits>. | .<digits>
    <suffix>          ::= <binarySI> | <decimalExponent> | <decimalSI>
    <binarySI>        ::= Ki | Mi | Gi | Ti | Pi | Ei
    <decimalSI>       ::= m | "" | k | M | G | T | P | E     (and n, u accepted on input)
    <decimalExponent> ::= "e" <signedNumber> | "E" <signedNumber>

Values are kept exact (fractions.Fraction). Like Quantity.Value() the byte count rounds UP
to the nearest integer, like Quantity.MilliValue() the millicore count rounds UP to the
nearest milli ("0.1m" is 1m). Resource limits cannot be negative (the API rejects them in
validation), so a leading "-" is reported as an error here. Surrounding whitespace is an error,
as in ParseQuantity.
"""

from __future__ import annotations

import math
import re
from fractions import Fraction

from ansible_collections.barepod.linux.plugins.module_utils._common import BarepodError

BINARY_SUFFIXES = {
    'Ki': 2 ** 10, 'Mi': 2 ** 20, 'Gi': 2 ** 30, 'Ti': 2 ** 40, 'Pi': 2 ** 50, 'Ei': 2 ** 60,
}
DECIMAL_SUFFIXES = {
    'n': Fraction(1, 10 ** 9), 'u': Fraction(1, 10 ** 6), 'm': Fraction(1, 1000), '': Fraction(1),
    'k': Fraction(10 ** 3), 'M': Fraction(10 ** 6), 'G': Fraction(10 ** 9),
    'T': Fraction(10 ** 12), 'P': Fraction(10 ** 15), 'E': Fraction(10 ** 18),
}
INT64_MAX = 2 ** 63 - 1

# the same split as quantity.go's splitREString, then strict checks of each part
_NUMBER_RE = re.compile(r'^([+-]?)([0-9]*)(?:\.([0-9]*))?(.*)\Z')
_EXP_RE = re.compile(r'^[eE]([+-]?[0-9]+)\Z')


def parse_quantity(value, field='quantity'):
    """Parse a quantity (str, int or float as YAML hands it over) into an exact Fraction.

    Raises BarepodError naming `field` and the value, with the reason, on anything the API
    server would reject ('10Mx', '1.5.3', '', 'K', '1e'), and on negative values.
    """
    if isinstance(value, bool) or value is None:
        raise BarepodError('quantity must be a string or a number, got %r' % (value,),
                           field=field, value=value)
    if isinstance(value, int):
        text = str(value)
    elif isinstance(value, float):
        if not math.isfinite(value):
            raise BarepodError('quantity %r is not a finite number' % (value,), field=field, value=value)
        text = repr(value)
    elif isinstance(value, str):
        text = value
    else:
        raise BarepodError('quantity must be a string or a number, got %r' % (value,),
                           field=field, value=value)
    m = _NUMBER_RE.match(text)
    sign, whole, frac, suffix = m.group(1), m.group(2), m.group(3), m.group(4)
    if not whole and not frac:
        raise BarepodError('%r is not a valid quantity: it must start with a number, e.g. '
                           '"100Mi", "1G", "250m", "1.5", "129e6"' % (text,), field=field, value=value)
    number = Fraction(int(whole or '0'))
    if frac:
        number += Fraction(int(frac), 10 ** len(frac))
    if suffix in BINARY_SUFFIXES:
        mult = Fraction(BINARY_SUFFIXES[suffix])
    elif suffix in DECIMAL_SUFFIXES:
        mult = DECIMAL_SUFFIXES[suffix]
    else:
        em = _EXP_RE.match(suffix)
        if not em:
            raise BarepodError(
                '%r is not a valid quantity: unknown suffix %r (binary: Ki Mi Gi Ti Pi Ei; '
                'decimal: n u m k M G T P E; exponent: e<n> or E<n>)' % (text, suffix),
                field=field, value=value)
        exp = int(em.group(1))
        if abs(exp) > 100:
            raise BarepodError('%r is not a valid quantity: exponent %d out of range' % (text, exp),
                               field=field, value=value)
        mult = Fraction(10) ** exp
    q = number * mult
    if sign == '-' and q != 0:
        raise BarepodError('%r is negative: resource quantities must be >= 0' % (text,),
                           field=field, value=value)
    return q


def _ceil(fr):
    return -((-fr.numerator) // fr.denominator)


def to_bytes(value, field='memory'):
    """Quantity.Value(): the integer value rounded up (memory in bytes)."""
    q = parse_quantity(value, field)
    n = _ceil(q)
    if n > INT64_MAX:
        raise BarepodError('%r is too large (more than %d)' % (value, INT64_MAX), field=field, value=value)
    return n


def to_milli(value, field='cpu'):
    """Quantity.MilliValue(): value*1000 rounded up (cpu in millicores, '0.1m' -> 1)."""
    q = parse_quantity(value, field)
    n = _ceil(q * 1000)
    if n > INT64_MAX:
        raise BarepodError('%r is too large' % (value,), field=field, value=value)
    return n


def to_int(value, field='quantity'):
    """A count (pids): Quantity.Value(), rounding up."""
    return to_bytes(value, field)
