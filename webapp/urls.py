"""Root URLs. Each app owns its own ``urls.py``; this file only mounts them."""

from django.contrib import admin
from django.urls import include, path
from drf_spectacular.views import SpectacularAPIView

from device_registry import api_urls as device_api_urls
from device_registry import views as device_views
from webapp import views
from webapp.accounts import api as accounts_api
from webapp.catalog import api as catalog_api
from webapp.catalog import views as catalog_views
from webapp.jobs import api as jobs_api
from webapp.jobs import sweep_api as jobs_sweep_api
from webapp.jobs import views as jobs_views
from webapp.reports import api as reports_api
from webapp.reports import sweep_api as reports_sweep_api
from webapp.reports import views as reports_views
from webapp.sensitivity import api as sensitivity_api

api_v1 = [
    path("me/", accounts_api.MeView.as_view(), name="me"),
    path("auth/token/", accounts_api.TokenObtainView.as_view(), name="token_obtain"),
    *accounts_api.api_urlpatterns,
    *catalog_api.api_urlpatterns,
    *jobs_api.api_urlpatterns,
    *reports_api.api_urlpatterns,
    *sensitivity_api.api_urlpatterns,
    *jobs_sweep_api.api_urlpatterns,
    *reports_sweep_api.api_urlpatterns,
]

urlpatterns = [
    path("", views.home, name="home"),
    path("models/", catalog_views.model_list, name="models"),
    path("datasets/", catalog_views.dataset_list, name="datasets"),
    path("", include("webapp.catalog.urls")),
    path("jobs/", jobs_views.job_list, name="jobs"),
    path("jobs/", include("webapp.jobs.urls")),
    path("devices/", device_views.device_list, name="devices"),
    path("devices/", include("device_registry.urls")),
    path("", include(device_api_urls.wheel_urlpatterns)),
    path("reports/", reports_views.report_index, name="reports"),
    path("reports/sweeps/", include("webapp.reports.sweep_urls")),
    path("reports/", include("webapp.reports.urls")),
    path("sensitivity/", include("webapp.sensitivity.urls")),
    path("accounts/", include("webapp.accounts.urls")),
    path("live/activity/", views.activity, name="activity"),
    path("admin/", admin.site.urls),
    path("api/schema/", SpectacularAPIView.as_view(), name="api_schema"),
    path("api/docs/", views.api_docs, name="api_docs"),
    path("api/v1/", include((api_v1, "api"), namespace="api")),
    path("api/v1/", include(device_api_urls.urlpatterns)),
    path("healthz", views.healthz, name="healthz"),
]

# 403 and 404 use Django's handlers with webapp/templates/403.html and 404.html (request
# context included); 500 needs its own so the page keeps the navigation when it can.
handler500 = "webapp.views.server_error"
