import os

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tests.integrations.apps.django_site.settings")

from asgimesh_django import get_wsgi_application

application = get_wsgi_application()
