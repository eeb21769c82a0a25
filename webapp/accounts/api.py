"""REST endpoints for accounts: who am I, and an API token for a username and password."""

from __future__ import annotations

from django.contrib.auth import authenticate
from drf_spectacular.utils import extend_schema
from rest_framework import serializers, status
from rest_framework.permissions import AllowAny
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from webapp.accounts import selectors, services
from webapp.accounts.models import User
from webapp.accounts.throttling import (
    THROTTLED_MESSAGE,
    login_failure_record,
    login_is_throttled,
    login_success_record,
)


class OrganizationMembershipSerializer(serializers.Serializer[object]):
    id = serializers.IntegerField(source="organization.id")
    name = serializers.CharField(source="organization.name")
    slug = serializers.CharField(source="organization.slug")
    role = serializers.CharField()


class MeSerializer(serializers.Serializer[object]):
    id = serializers.IntegerField()
    username = serializers.CharField()
    email = serializers.EmailField()
    current_organization_id = serializers.IntegerField(allow_null=True)
    organizations = OrganizationMembershipSerializer(many=True)


class TokenRequestSerializer(serializers.Serializer[object]):
    username = serializers.CharField()
    password = serializers.CharField(style={"input_type": "password"}, trim_whitespace=False)
    name = serializers.CharField(required=False, allow_blank=True, max_length=100)


class TokenResponseSerializer(serializers.Serializer[object]):
    token = serializers.CharField(help_text="Shown once; only its hash is stored.")
    prefix = serializers.CharField()


class DetailSerializer(serializers.Serializer[object]):
    detail = serializers.CharField()


class MeView(APIView):
    @extend_schema(responses=MeSerializer, summary="The signed-in user and their organisations")
    def get(self, request: Request) -> Response:
        user: User = request.user  # type: ignore[assignment]
        org = getattr(request._request, "organization", None)
        data = {
            "id": user.pk,
            "username": user.username,
            "email": user.email,
            "current_organization_id": org.pk if org is not None else None,
            "organizations": selectors.membership_list_for_user(user=user),
        }
        return Response(MeSerializer(data).data)


class TokenObtainView(APIView):
    authentication_classes: list[type] = []
    permission_classes = [AllowAny]

    @extend_schema(
        request=TokenRequestSerializer,
        responses={201: TokenResponseSerializer, 400: DetailSerializer, 429: DetailSerializer},
        summary="Create an API token from a username and password (throttled like login)",
    )
    def post(self, request: Request) -> Response:
        serializer = TokenRequestSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        username = serializer.validated_data["username"]
        if login_is_throttled(request._request, username):
            return Response({"detail": THROTTLED_MESSAGE}, status=status.HTTP_429_TOO_MANY_REQUESTS)
        user = authenticate(
            request._request, username=username, password=serializer.validated_data["password"]
        )
        if user is None:
            login_failure_record(request._request, username)
            return Response(
                {"detail": "Unable to sign in with that username and password."},
                status=status.HTTP_400_BAD_REQUEST,
            )
        login_success_record(request._request, username)
        token, key = services.api_token_create(
            user=user,
            name=serializer.validated_data.get("name", ""),
        )
        return Response({"token": key, "prefix": token.prefix}, status=status.HTTP_201_CREATED)
