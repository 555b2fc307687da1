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

import importlib.util
import sys
from typing import Any


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
    try:
        import kubernetes.config        # noqa: F401 - kube_config takes the stand-in now
    finally:
        del client.ApiClient            # anyone else gets the real one, on first use


_light()
