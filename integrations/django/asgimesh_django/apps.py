"""``"asgimesh_django"`` in ``INSTALLED_APPS``: a bad ``MESH_*`` setting as a Django system check.

``get_wsgi_application()`` already stops a server (gunicorn, uvicorn) that imports it with a bad
setting. ``manage.py runserver`` loads the WSGI application in a thread of its own, though, and
its auto-reloader keeps waiting for a code change after that thread died of a traceback. The
check runs first, in every management command that runs checks, and says it in Django's own
words: ``?: (asgimesh.E001) MESH_TIMEOUT='fast': expected a duration ...``; ``runserver
--noreload``, ``check`` and ``migrate`` then exit with status 1.
"""

from __future__ import annotations

from typing import Any

from django.apps import AppConfig
from django.core import checks

from asgimesh import ConfigError, MeshSettings

__all__ = ["AsgimeshConfig", "check_mesh_settings"]


def check_mesh_settings(app_configs: Any = None, **kwargs: Any) -> list[checks.CheckMessage]:
    """Read ``MESH_*`` as the runtime will (settings only: no watcher, no thread)."""
    try:
        MeshSettings.from_env()
    except ConfigError as exc:
        return [checks.Error(str(exc), id="asgimesh.E001")]
    return []


class AsgimeshConfig(AppConfig):  # type: ignore[misc]
    name = "asgimesh_django"
    verbose_name = "asgimesh"

    def ready(self) -> None:
        checks.register(check_mesh_settings)
