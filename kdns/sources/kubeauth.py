"""Where the API is and who kdns is to it: a kubernetes client Configuration from
--in-cluster (the pod's service account), --kubeconfig, $KUBECONFIG or ~/.kube/config.

The kubernetes client is kept for this alone (kubeconfig contexts, exec plugins, token
rotation); reading the API goes through kdns.sources.apiread.
"""

from __future__ import annotations

import os

import yaml
from kdns.sources import kubeimport  # noqa: F401, I001 - first: see there
from kubernetes.client.configuration import Configuration
from kubernetes.config import incluster_config, kube_config
from kubernetes.config.config_exception import ConfigException

DEFAULT_KUBECONFIG = "~/.kube/config"
# Where the kubelet mounts a pod's service account token and the cluster CA.
SERVICE_ACCOUNT_DIR = "/var/run/secrets/kubernetes.io/serviceaccount"


class ClusterError(Exception):
    """A problem reaching or reading the API, worded for the user (no traceback)."""


def load_configuration(kubeconfig: str | None = None, context: str | None = None,
                       in_cluster: bool = False) -> Configuration:
    """The usual resolution: --in-cluster (service account), else --kubeconfig, else
    $KUBECONFIG (a path list), else ~/.kube/config; --context picks the context."""
    cfg = Configuration()
    if in_cluster:
        try:
            incluster_config.InClusterConfigLoader(
                token_filename=os.path.join(SERVICE_ACCOUNT_DIR, "token"),
                cert_filename=os.path.join(SERVICE_ACCOUNT_DIR, "ca.crt"),
            ).load_and_set(cfg)           # re-reads the (rotated, bound) token every minute
        except ConfigException as exc:
            raise ClusterError(f"--in-cluster: {exc} (is kdns running in a pod with a service account?)") from None
    else:
        source = "--kubeconfig" if kubeconfig else "KUBECONFIG" if os.environ.get("KUBECONFIG") else "default"
        paths = kubeconfig or os.environ.get("KUBECONFIG") or DEFAULT_KUBECONFIG
        existing = [p for p in paths.split(os.pathsep) if p and os.path.exists(os.path.expanduser(p))]
        if not existing:
            hint = " (use --kubeconfig, set KUBECONFIG, or --in-cluster inside a pod)" if source == "default" else ""
            raise ClusterError(f"kubeconfig {paths}: no such file{hint}")
        try:
            # persist_config=False: never rewrite the user's kubeconfig (refreshed tokens).
            kube_config.load_kube_config(config_file=os.pathsep.join(existing), context=context,
                                         client_configuration=cfg, persist_config=False)
        except ConfigException as exc:
            where = f"context {context!r} in " if context else ""
            raise ClusterError(f"{where}kubeconfig {paths}: {exc}") from None
        except yaml.YAMLError as exc:
            raise ClusterError(f"kubeconfig {paths}: not YAML: {' '.join(str(exc).split())}") from None
        except (OSError, ValueError, TypeError, AttributeError, KeyError) as exc:   # unreadable, odd shapes
            raise ClusterError(f"kubeconfig {paths}: not a usable kubeconfig "
                               f"({type(exc).__name__}: {' '.join(str(exc).split())})") from None
    # Our loops do the retrying (with backoff and Retry-After); urllib3's silent retries
    # would multiply every read timeout.
    cfg.retries = False
    return cfg
