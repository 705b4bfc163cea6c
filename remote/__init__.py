"""Shipping releases: published sites, pulling from mirrors, mirroring and serving a site.

One module per job: ``errors`` (what can go wrong on the way), ``site`` (the
layout of a published site), ``index`` (the signed index: format and
signatures), ``objects`` (compressed large objects: writing and checking),
``publish`` (writing a site from a repository), ``site_deltas`` (the deltas
``publish --deltas-from`` makes), ``http`` (the HTTP client:
pooled, bounded, resumable), ``mirrors`` (failover between the servers of one
remote), ``crosscheck`` (files as byte ranges from several servers), ``config``
(the remotes a repository knows), ``pull`` (index, pack, objects into a
repository), ``pull_deltas`` (choosing, fetching and applying deltas in a
pull), ``mirror`` (a verified copy of a site), ``serve`` (a read-only HTTP
server for a site).  ``remote`` imports ``pack`` and ``store``, never
``overlay``, and prints nothing.
"""
