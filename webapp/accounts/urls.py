from django.urls import path

from webapp.accounts import views

app_name = "accounts"

urlpatterns = [
    path("login/", views.LoginView.as_view(), name="login"),
    path("logout/", views.LogoutView.as_view(), name="logout"),
    path("password/", views.PasswordChangeView.as_view(), name="password_change"),
    path("password/reset/", views.PasswordResetView.as_view(), name="password_reset"),
    path(
        "password/reset/sent/",
        views.PasswordResetDoneView.as_view(),
        name="password_reset_done",
    ),
    path(
        "password/reset/<uidb64>/<token>/",
        views.PasswordResetConfirmView.as_view(),
        name="password_reset_confirm",
    ),
    path(
        "password/reset/done/",
        views.PasswordResetCompleteView.as_view(),
        name="password_reset_complete",
    ),
    path("tokens/", views.api_tokens, name="api_tokens"),
    path("tokens/<int:pk>/revoke/", views.api_token_revoke, name="api_token_revoke"),
    path("organization/switch/", views.organization_switch, name="organization_switch"),
    path("organization/", views.organization_settings, name="organization_settings"),
    path("organization/members/add/", views.member_add, name="member_add"),
    path(
        "organization/members/<int:pk>/role/",
        views.member_role_change,
        name="member_role_change",
    ),
    path("organization/members/<int:pk>/remove/", views.member_remove, name="member_remove"),
    path("organization/invitations/", views.invitation_create, name="invitation_create"),
    path(
        "organization/invitations/<int:pk>/revoke/",
        views.invitation_revoke,
        name="invitation_revoke",
    ),
    path("invitations/<str:key>/", views.invitation_accept, name="invitation_accept"),
]
