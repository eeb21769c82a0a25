"""REST endpoints for accounts: who am I, and API tokens (make one from a password, list,
revoke)."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.contrib.auth import authenticate
from django.db.models import QuerySet
from django.shortcuts import get_object_or_404
from django.urls import path
from drf_spectacular.utils import extend_schema
from rest_framework import generics, serializers, status
from rest_framework.permissions import AllowAny
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from webapp.accounts import selectors, services
from webapp.accounts.models import ApiToken, User
from webapp.accounts.permissions import SignedIn
from webapp.accounts.throttling import (
    login_failure_record,
    login_success_record,
    login_wait_seconds,
    throttled_message,
)

_EXPIRY_DAYS = [d for d in services.API_TOKEN_EXPIRY_DAYS if d is not None]


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
    name = serializers.CharField(
        required=False,
        allow_blank=True,
        max_length=100,
        help_text="What uses the token; a dated name when left out.",
    )
    expires_in_days = serializers.ChoiceField(
        choices=_EXPIRY_DAYS,
        required=False,
        allow_null=True,
        help_text="30, 90 or 365; null: never expires. Left out: the server's default "
        "(EDGESLIM_API_TOKEN_DEFAULT_DAYS, 90 unless configured).",
    )


class ApiTokenSerializer(serializers.ModelSerializer[ApiToken]):
    class Meta:
        model = ApiToken
        fields = ["id", "name", "prefix", "created_at", "last_used_at", "expires_at"]
        read_only_fields = fields


class TokenResponseSerializer(ApiTokenSerializer):
    token = serializers.CharField(help_text="Shown once; only its hash is stored.")

    class Meta(ApiTokenSerializer.Meta):
        fields = ["token", *ApiTokenSerializer.Meta.fields]
        read_only_fields = fields


class DetailSerializer(serializers.Serializer[object]):
    detail = serializers.CharField()


class MeView(APIView):
    permission_classes = [SignedIn]

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
        wait_s = login_wait_seconds(request._request, username)
        if wait_s:
            return Response(
                {"detail": throttled_message(wait_s)},
                status=status.HTTP_429_TOO_MANY_REQUESTS,
                headers={"Retry-After": str(wait_s)},
            )
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
        if "expires_in_days" in serializer.validated_data:
            days = serializer.validated_data["expires_in_days"]
        else:
            days = settings.EDGESLIM_API_TOKEN_DEFAULT_DAYS or None
        token, key = services.api_token_create(
            user=user,
            name=serializer.validated_data.get("name", ""),
            expires_in_days=days,
        )
        data: dict[str, Any] = {"token": key, **ApiTokenSerializer(token).data}
        return Response(data, status=status.HTTP_201_CREATED)


class ApiTokenListView(generics.ListAPIView[ApiToken]):
    """The caller's API tokens that are not revoked (expired ones included), newest first."""

    serializer_class = ApiTokenSerializer
    permission_classes = [SignedIn]

    def get_queryset(self) -> QuerySet[ApiToken]:
        return selectors.api_token_list_for_user(user=self.request.user)  # type: ignore[arg-type]

    @extend_schema(summary="List your API tokens (never their keys)")
    def get(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        return super().get(request, *args, **kwargs)


class ApiTokenRevokeView(APIView):
    permission_classes = [SignedIn]

    @extend_schema(
        request=None,
        responses={204: None, 404: DetailSerializer},
        summary="Revoke one of your API tokens (another user's id answers 404)",
    )
    def delete(self, request: Request, pk: int) -> Response:
        token = get_object_or_404(ApiToken, pk=pk, user=request.user, revoked_at=None)
        services.api_token_revoke(token=token)
        return Response(status=status.HTTP_204_NO_CONTENT)


api_urlpatterns = [
    path("auth/tokens/", ApiTokenListView.as_view(), name="token_list"),
    path("auth/tokens/<int:pk>/", ApiTokenRevokeView.as_view(), name="token_revoke"),
]
