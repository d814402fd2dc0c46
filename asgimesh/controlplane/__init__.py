"""The control-plane server (``asgimesh control-plane``): a Starlette app over a store.

Only the server lives here: what a service runs to follow the control plane is in
:mod:`asgimesh.policy.sources`, and nothing on a service's data path imports this package.
The stores (SQLite file or etcd) are in :mod:`asgimesh.controlplane.stores`.
"""

from ._keys import KeyStoreError, load_all_keys, load_keys
from ._prometheus import PROMETHEUS_WINDOW, QUERIES
from ._server import ControlPlaneConfig, create_app

__all__ = [
    "PROMETHEUS_WINDOW",
    "QUERIES",
    "ControlPlaneConfig",
    "KeyStoreError",
    "create_app",
    "load_all_keys",
    "load_keys",
]
