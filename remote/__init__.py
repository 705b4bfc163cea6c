"""Shipping releases: published sites, pulling from mirrors, serving a site.

One module per job: ``errors`` (what can go wrong on the way), ``site`` (the
layout of a published site), ``index`` (the signed index: format and
signatures), ``publish`` (writing a site from a repository), ``http`` (the
HTTP client: pooled, bounded, resumable), ``mirrors`` (failover between the
servers of one remote), ``config`` (the remotes a repository knows),
``pull`` (index, pack, objects into a repository), ``serve`` (a read-only
HTTP server for a site).  ``remote`` imports ``pack`` and ``store``, never
``overlay``.
"""
