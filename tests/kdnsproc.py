"""The kdns subprocess wrapper lives in conftest; this name stays for the forwarding tests."""

from conftest import DATA, ROOT, Kdns as KdnsProcess  # noqa: F401
