"""A Django project laid out as ``startproject`` makes one, with the plugin's app installed."""

DEBUG = False
ALLOWED_HOSTS = ["*"]
ROOT_URLCONF = "tests.integrations.apps.django_site.urls"
SECRET_KEY = "asgimesh-test-only"
MIDDLEWARE: list[str] = []
INSTALLED_APPS = ["asgimesh_django"]
WSGI_APPLICATION = "tests.integrations.apps.django_site.wsgi.application"
DATABASES: dict[str, object] = {}
