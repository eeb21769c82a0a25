from django.urls import path

from webapp.accounts import views

app_name = "accounts"

urlpatterns = [
    path("login/", views.LoginView.as_view(), name="login"),
    path("logout/", views.LogoutView.as_view(), name="logout"),
    path("organization/switch/", views.organization_switch, name="organization_switch"),
    path("organization/", views.organization_settings, name="organization_settings"),
    path("organization/members/add/", views.member_add, name="member_add"),
    path(
        "organization/members/<int:pk>/role/",
        views.member_role_change,
        name="member_role_change",
    ),
]
