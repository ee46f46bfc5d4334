"""A one-file Django project, served by kestrelpy through Django's own ASGI handler."""

from __future__ import annotations

import django
from django.conf import settings
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.urls import path

settings.configure(
    DEBUG=False,
    SECRET_KEY="test-only",
    ROOT_URLCONF=__name__,
    ALLOWED_HOSTS=["127.0.0.1", "localhost"],
    MIDDLEWARE=[],
    INSTALLED_APPS=[],
)
django.setup()


def hello(request: HttpRequest) -> HttpResponse:
    return HttpResponse(f"hello from django, path={request.path}", content_type="text/plain")


def echo(request: HttpRequest) -> JsonResponse:
    return JsonResponse({"method": request.method, "length": len(request.body), "q": request.GET.get("q")})


urlpatterns = [path("hello", hello), path("echo", echo)]

from django.core.asgi import get_asgi_application  # noqa: E402

application = get_asgi_application()
