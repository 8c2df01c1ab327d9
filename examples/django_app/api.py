"""A Django REST framework view with token authentication (the snippets
tutorial's shape): ``POST /api/snippets/`` makes a snippet slowly.

Authentication and permissions run before a job exists (the app decides
first): without a valid ``Authorization: Token <key>`` DRF answers its own
401 at once and no job is made; with one, the view's body runs in the job.
Tokens come from ``EXAMPLE_API_TOKENS`` (``key:user,key:user``); a real
project would use ``rest_framework.authtoken``.
"""

from __future__ import annotations

import os
import time
from typing import Any

from rest_framework import serializers
from rest_framework.authentication import TokenAuthentication
from rest_framework.exceptions import AuthenticationFailed
from rest_framework.permissions import IsAuthenticated
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from async_accept import long_running


class ApiUser:
    is_authenticated = True

    def __init__(self, name: str) -> None:
        self.username = name


class EnvTokenAuthentication(TokenAuthentication):
    """DRF's ``Authorization: Token <key>`` scheme, keys from the environment."""

    def authenticate_credentials(self, key: str) -> tuple[Any, str]:
        tokens = dict(
            item.split(":", 1)
            for item in os.environ.get("EXAMPLE_API_TOKENS", "").split(",")
            if ":" in item
        )
        if key not in tokens:
            raise AuthenticationFailed("Invalid token.")
        return ApiUser(tokens[key]), key


class SnippetSerializer(serializers.Serializer):
    title = serializers.CharField(max_length=100)
    code = serializers.CharField()


class SnippetList(APIView):
    authentication_classes = [EnvTokenAuthentication]
    permission_classes = [IsAuthenticated]

    @long_running(sla=30)
    def post(self, request: Request) -> Response:
        """Highlighting takes a while: a job."""
        serializer = SnippetSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        time.sleep(0.5)
        return Response({**serializer.validated_data, "owner": request.user.username}, status=201)
