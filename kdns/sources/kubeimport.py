"""The kubernetes client, imported without the parts kdns never runs.

``import kubernetes`` runs the package's __init__, which imports dynamic, watch, stream
(websocket), leaderelection, informer and utils; and kubernetes.config.kube_config imports
``ApiClient``, whose module pulls in pydantic, dateutil and the response models, for the OIDC
token refresh alone. Measured on kubernetes 37: the client's configuration, REST layer and
kubeconfig loader cost +20.6 MB of RSS imported the usual way, +8 MB this way.

So the package is entered without running its __init__ (its submodules import as usual), and
kube_config gets an ApiClient that imports the real one when it is first built (an OIDC
refresh). Every other name of the client stays as it was. Imported by each module of
kdns.sources that imports kubernetes, before it does.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
import types
from typing import Any


class _OnUse:
    """A class of another module, imported when first instantiated."""

    module = name = ""

    def __new__(cls, *args: Any, **kwargs: Any) -> Any:
        return getattr(importlib.import_module(cls.module), cls.name)(*args, **kwargs)


def _stand_in(module: str, **names: str) -> types.ModuleType:
    """A module object that stands in for ``module`` while kube_config imports: the
    ``names`` given are _OnUse classes, any other attribute imports the real module."""
    stub = types.ModuleType(module)
    for attr, qualname in names.items():
        stub.__dict__[attr] = type(qualname, (_OnUse,), {"module": module, "name": qualname})

    def __getattr__(attr: str) -> Any:
        if attr.startswith("__") or sys.modules.get(module) is stub:
            raise AttributeError(attr)      # the import system's probes, while it stands in
        real = importlib.import_module(module)
        try:
            return getattr(real, attr)
        except AttributeError:
            return importlib.import_module(f"{module}.{attr}")
    stub.__getattr__ = __getattr__          # type: ignore[attr-defined] - PEP 562
    return stub


class _ApiClientOnUse:
    """kubernetes.client.ApiClient, imported when kube_config first builds one."""

    def __new__(cls, *args: Any, **kwargs: Any) -> Any:
        from kubernetes.client.api_client import ApiClient
        return ApiClient(*args, **kwargs)


def _light() -> None:
    if "kubernetes" in sys.modules:
        return                          # imported already (by the host program): as it is
    spec = importlib.util.find_spec("kubernetes")
    if spec is None or not spec.submodule_search_locations:
        return                          # not installed: the usual import error follows
    sys.modules["kubernetes"] = importlib.util.module_from_spec(spec)   # not executed
    import kubernetes.client as client  # its __init__ is lazy: names import on first use
    client.ApiClient = _ApiClientOnUse
    # kube_config imports requests_oauthlib (and so requests) and oauthlib at its top, for the
    # OIDC refresh alone: +7 MB of RSS. Stand-ins while it imports; the real modules on use.
    stubs = {name: _stand_in(name, **names) for name, names in (
        ("requests_oauthlib", {"OAuth2Session": "OAuth2Session"}), ("oauthlib", {}),
        ("oauthlib.oauth2", {})) if name not in sys.modules}
    sys.modules.update(stubs)
    try:
        import kubernetes.config        # noqa: F401 - kube_config takes the stand-ins now
    finally:
        del client.ApiClient            # anyone else gets the real one, on first use
        for name, stub in stubs.items():
            if sys.modules.get(name) is stub:
                del sys.modules[name]   # a later import gets the real module


_light()
