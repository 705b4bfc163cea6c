"""Where ``objects/xx`` exists as a transaction begins, its objects are staged flat (FORMAT
section 6): as ``xxrest`` beside the lock, never in ``xx/`` subdirectories; publishing puts
them at ``objects/xx/rest`` (where it does not, section 20: tests/test_transaction_staging.py);
an object a caller staged at ``staging/xx/rest`` (remote.pull's verified downloads) is
adopted and published too; a digest handed in as checked is the object's name."""

from __future__ import annotations

import os

from store.fsverity import digest_bytes
from store.ids import RawId
from store.model import Meta
from store.transaction import make_object_dirs

META = Meta(0o644, os.getuid(), os.getgid())


def test_objects_are_staged_flat_and_published_under_their_prefix(repo):
    make_object_dirs(repo.layout.objects)  # a repository with objects in every prefix
    with repo.writing() as tx:
        digests = [tx.add_file_bytes(b"content %d" % i, META) for i in range(40)]
        tree = tx.add_meta_object("tree", b"not parsed here", RawId(bytes(32)))
        staged = os.listdir(tx.staging)
        assert not [n for n in staged if os.path.isdir(os.path.join(tx.staging, n))]
        assert len(staged) == 41 + 1  # the objects and the lock
        tx.publish()
        assert os.listdir(tx.staging) == ["lock"]
    for digest in digests:
        path = repo.objects.file_path(digest, META)
        assert os.path.isfile(path), path
        assert os.path.basename(os.path.dirname(path)) == digest.hex()[:2]
    assert os.path.isfile(repo.objects.path("tree", tree))
    assert not [n for n in os.listdir(repo.layout.tmp) if n.startswith("staging-")]


def test_an_object_staged_by_a_caller_in_a_prefix_directory_is_adopted(repo):
    data = b"downloaded and verified elsewhere"
    digest = RawId(digest_bytes(data))
    h = digest.hex()
    rel = f"{h[:2]}/{h[2:]}.{META.object_key()}.file"
    with repo.writing() as tx:
        os.makedirs(os.path.join(tx.staging, rel[:2]))
        with open(os.path.join(tx.staging, rel), "wb") as handle:
            handle.write(data)
        os.chmod(os.path.join(tx.staging, rel), META.mode)
        tx.adopt([rel])
        tx.publish()
    with open(repo.objects.file_path(digest, META), "rb") as handle:
        assert handle.read() == data


def test_a_checked_digest_names_the_object(repo):
    data = b"an inline file"
    digest = RawId(digest_bytes(data))
    with repo.writing() as tx:
        assert tx.add_file_bytes(data, META, checked_digest=digest) == digest
        tx.publish()
    assert os.path.isfile(repo.objects.file_path(digest, META))
