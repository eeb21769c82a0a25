from django.urls import path, re_path

from webapp.reports import compare_views, views

app_name = "reports"

urlpatterns = [
    path("", views.report_index, name="index"),
    path("jobs/<int:pk>/", views.report_detail, name="detail"),
    path("compare/", compare_views.compare, name="compare"),
    re_path(
        r"^compare/export\.(?P<fmt>csv|json)$", compare_views.compare_export, name="compare_export"
    ),
]
