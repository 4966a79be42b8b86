"""Make `ansible_collections.barepod.linux` importable for a benchmark script.

`make setup` links the checkout as .venv/collections/ansible_collections/barepod/linux; without
it, a temporary link is made. Importing this module puts the root on sys.path once.
"""
import os
import sys
import tempfile

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def collections_root():
    root = os.path.join(REPO, '.venv', 'collections')
    if os.path.exists(os.path.join(root, 'ansible_collections', 'barepod', 'linux', 'galaxy.yml')):
        return root
    root = tempfile.mkdtemp(prefix='barepod-coll-')
    os.makedirs(os.path.join(root, 'ansible_collections', 'barepod'))
    os.symlink(REPO, os.path.join(root, 'ansible_collections', 'barepod', 'linux'))
    return root


COLLECTIONS = collections_root()
if COLLECTIONS not in sys.path:
    sys.path.insert(0, COLLECTIONS)
