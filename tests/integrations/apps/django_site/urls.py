from django.http import JsonResponse
from django.urls import path

urlpatterns = [path("hello", lambda request: JsonResponse({"hello": "django"}))]
