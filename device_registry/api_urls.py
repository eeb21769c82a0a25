"""API routes of the device registry, mounted under /api/v1/, and the agent wheel."""

from django.urls import path

from device_registry import agent_views, api

urlpatterns = [
    path("agent/enroll", agent_views.enroll, name="agent_enroll"),
    path("agent/keys", agent_views.signing_keys, name="agent_keys"),
    path("agent/artifacts/<int:artifact_id>", agent_views.artifact_download, name="agent_artifact"),
    path(
        "agent/artifacts/<int:artifact_id>/eval",
        agent_views.artifact_eval_download,
        name="agent_artifact_eval",
    ),
    path("devices/", api.DeviceListView.as_view(), name="api_devices"),
    path("devices/<int:pk>/", api.DeviceDetailView.as_view(), name="api_device"),
    path("devices/<int:pk>/revoke/", api.DeviceRevokeView.as_view(), name="api_device_revoke"),
    path("deployments/", api.DeploymentListView.as_view(), name="api_deployments"),
    path("deployments/<int:pk>/", api.DeploymentDetailView.as_view(), name="api_deployment"),
    path(
        "deployments/<int:pk>/cancel/",
        api.DeploymentCancelView.as_view(),
        name="api_deployment_cancel",
    ),
]

wheel_urlpatterns = [
    path("agent/", agent_views.agent_version_info, name="agent_info"),
    path("agent/<str:filename>", agent_views.agent_wheel, name="agent_wheel"),
]
