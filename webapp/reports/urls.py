from django.urls import path, re_path

from webapp.reports import compare_views, export_views, fleet_views, views

app_name = "reports"

urlpatterns = [
    path("", views.report_index, name="index"),
    path("jobs/<int:pk>/", views.report_detail, name="detail"),
    re_path(
        r"^jobs/(?P<pk>[0-9]+)/export\.(?P<fmt>csv|json|pdf)$",
        export_views.report_export,
        name="export",
    ),
    path("compare/", compare_views.compare, name="compare"),
    re_path(
        r"^compare/export\.(?P<fmt>csv|json|pdf)$",
        compare_views.compare_export,
        name="compare_export",
    ),
    path("versions/<int:pk>/fleet/", fleet_views.fleet, name="fleet"),
    re_path(
        r"^versions/(?P<pk>[0-9]+)/fleet/export\.(?P<fmt>csv|json|pdf)$",
        fleet_views.fleet_export,
        name="fleet_export",
    ),
    path("versions/<int:pk>/lineage/", fleet_views.lineage, name="lineage"),
    re_path(
        r"^versions/(?P<pk>[0-9]+)/lineage/export\.(?P<fmt>csv|json)$",
        fleet_views.lineage_export,
        name="lineage_export",
    ),
]
