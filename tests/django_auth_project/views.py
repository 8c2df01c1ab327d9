"""Login, a session-key rotation, a marked view for session users, a marked
DRF view for token/basic users, and a token refresh."""

from __future__ import annotations

from typing import Any

from django.contrib.auth import authenticate, login
from django.http import HttpResponse, JsonResponse
from django.views.decorators.http import require_POST
from rest_framework.authentication import BasicAuthentication, TokenAuthentication
from rest_framework.authtoken.models import Token
from rest_framework.decorators import api_view
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from async_accept import long_running


def hello(request: Any) -> HttpResponse:
    return HttpResponse("hello")


@require_POST
def do_login(request: Any) -> HttpResponse:
    """Log in with username and password; login() cycles the session key."""
    user = authenticate(
        request, username=request.POST.get("username"), password=request.POST.get("password")
    )
    if user is None:
        return HttpResponse("no", status=403)
    login(request, user)
    return HttpResponse("in")


@require_POST
def rotate(request: Any) -> HttpResponse:
    """A new session key for the same session (what login() does to an anonymous one)."""
    request.session.cycle_key()
    return HttpResponse("rotated")


@require_POST
@long_running(sla=30)
def work(request: Any) -> JsonResponse:
    return JsonResponse({"user": request.user.get_username()})


class ApiWork(APIView):
    """A DRF view: Token or Basic authentication, IsAuthenticated (the default)."""

    authentication_classes = [TokenAuthentication, BasicAuthentication]

    @long_running(sla=30)
    def post(self, request: Request) -> Response:
        return Response({"user": request.user.get_username()})


@api_view(["POST"])
def rotate_token(request: Request) -> Response:
    """A token refresh: the caller's token is replaced by a new one."""
    Token.objects.filter(user=request.user).delete()
    return Response({"token": Token.objects.create(user=request.user).key})
