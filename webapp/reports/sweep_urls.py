"""The sweep pages, mounted at ``/reports/sweeps/`` (namespace ``sweeps``)."""

from django.urls import path

from webapp.reports import sweep_views

app_name = "sweeps"

urlpatterns = [
    path("", sweep_views.sweep_list, name="list"),
    path("<int:pk>/", sweep_views.sweep_detail, name="detail"),
    path("<int:pk>/live/", sweep_views.sweep_regions, name="live_regions"),
    path("<int:pk>/cancel/", sweep_views.sweep_cancel, name="cancel"),
]
