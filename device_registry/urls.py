"""Pages of the device registry, mounted at /devices/."""

from django.urls import path

from device_registry import views

app_name = "devices"

urlpatterns = [
    path("register/", views.device_register, name="register"),
    path("help/", views.device_help, name="help"),
    path("<int:pk>/", views.device_detail, name="detail"),
    path("<int:pk>/revoke/", views.device_revoke, name="revoke"),
    path("<int:pk>/code/", views.device_new_code, name="new_code"),
    path("artifacts/", views.artifact_list, name="artifacts"),
    path("deploy/", views.deployment_new, name="deploy"),
    path(
        "deploy/model-version/<int:pk>/",
        views.model_version_deploy,
        name="deploy_model_version",
    ),
    path("deployments/", views.deployment_list, name="deployments"),
    path("deployments/<int:pk>/", views.deployment_detail, name="deployment"),
    path("deployments/<int:pk>/cancel/", views.deployment_cancel, name="deployment_cancel"),
]
