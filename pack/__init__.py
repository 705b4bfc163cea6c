"""Signed packs: build, sign, verify, read and unpack.

One module per job: ``format`` (layout, limits, zstd frames), ``manifest``
(the rows), ``reader`` (the one parser of untrusted pack bytes), ``build``,
``keys``, ``signature`` (detached signature files), ``verify`` (trust
policy), ``freshness`` (rollback protection), ``unpack`` (safe tree
creation), ``importer`` (into a repository).  Every way a pack can be bad is
a ``store.errors.PackError``; every signature problem a ``SignatureError``;
an older pack a ``DowngradeError``.
"""
