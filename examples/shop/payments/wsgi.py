"""``gunicorn payments.wsgi:application``: Django inside the mesh."""

import os

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "payments.settings")

from asgimesh_django import get_wsgi_application

application = get_wsgi_application()
