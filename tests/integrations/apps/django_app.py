"""The same small service in Django (settings in this module), served over WSGI or ASGI."""

import django
from django.conf import settings
from django.http import JsonResponse
from django.urls import path

settings.configure(
    DEBUG=False,
    ALLOWED_HOSTS=["*"],
    ROOT_URLCONF=__name__,
    SECRET_KEY="asgimesh-test-only",
    MIDDLEWARE=[],
    INSTALLED_APPS=[],
)
django.setup()

from asgimesh_django import client, current_context, get_asgi_application, get_wsgi_application  # noqa: E402


def whoami(request):  # type: ignore[no-untyped-def]
    ctx = current_context()
    assert ctx is not None
    return JsonResponse(
        {
            "request_id": ctx.request_id,
            "trace_id": ctx.trace_id,
            "has_deadline": ctx.deadline is not None,
        }
    )


def call(request):  # type: ignore[no-untyped-def]
    return JsonResponse(client().get("http://echo/echo").json())


urlpatterns = [path("whoami", whoami), path("call", call)]

wsgi = get_wsgi_application()
asgi = get_asgi_application()
