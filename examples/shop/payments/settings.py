"""The shop's payments service: a Django project with one view, in the mesh through
``asgimesh_django`` (the WSGI application in ``wsgi.py``, the settings check in
``INSTALLED_APPS``).

``DEMO_FAIL_PERCENT`` makes a replica answer that share of charges with 503, so that retries
and outlier ejection have something to do.
"""

import os

DEBUG = False
ALLOWED_HOSTS = ["*"]
SECRET_KEY = os.environ.get("DJANGO_SECRET_KEY", "shop-example-not-a-secret")
ROOT_URLCONF = "payments.urls"
INSTALLED_APPS = ["asgimesh_django"]
MIDDLEWARE: list[str] = []
DATABASES: dict[str, dict[str, str]] = {}
WSGI_APPLICATION = "payments.wsgi.application"
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"console": {"class": "logging.StreamHandler"}},
    "root": {"handlers": ["console"], "level": "INFO"},
    "loggers": {"httpx": {"level": "WARNING"}},  # not a line per control-plane poll
}
