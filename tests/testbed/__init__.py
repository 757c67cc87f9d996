"""The test bed: real registries (Debian's docker-registry, distribution 2.8), a token server, seeding
helpers and an isolated skopeo. No fakes of the registry protocol.

- :mod:`testbed.registry`: :class:`RegistryProcess` (plain / Basic / TLS / token, access-log counting).
- :mod:`testbed.tokenserver`: :class:`TokenServer` (signed JWTs, grants per user, request counting).
- :mod:`testbed.certs`: throw-away CA, server certificates, token signing key.
- :mod:`testbed.seed`: push and read back blobs, images, indexes and schema 1 manifests with raw API calls.
- :mod:`testbed.skopeo`: :class:`Skopeo` with its own policy, auth file and blob-info cache.
- :mod:`testbed.system`: skip locally / fail in CI when a system binary is missing.
- :mod:`testbed.checker`: walks a registry and names every manifest whose blobs or children are missing.
- :mod:`testbed.hostile`: :class:`HostileServer`, a scripted registry that lies (attack tests), and
  :class:`Witness`, the other host it points to, which records what reaches it.

Fixtures live in ``tests/conftest.py``: ``registry``, ``registry2``, ``basic_registry``, ``tls_registry``,
``token_registry``, ``make_registry`` and ``skopeo``.
"""
