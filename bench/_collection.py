"""Make `ansible_collections.barepod.linux` importable for a benchmark script.

`make setup` links the checkout as .venv/collections/ansible_collections/barepod/linux; without
it, a temporary link is made (tests/harness.py's collections_root). Importing this module puts
the root, and tests/ (for the harness the benchmarks share with the tests), on sys.path once.
"""
import os
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if os.path.join(REPO, 'tests') not in sys.path:
    sys.path.insert(0, os.path.join(REPO, 'tests'))  # tests/harness.py, shared with the tests

from harness import collections_root  # noqa: E402

COLLECTIONS = collections_root()
if COLLECTIONS not in sys.path:
    sys.path.insert(0, COLLECTIONS)
