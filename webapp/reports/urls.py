from django.urls import path

from webapp.reports import views

app_name = "reports"

urlpatterns = [
    path("", views.report_index, name="index"),
    path("jobs/<int:pk>/", views.report_detail, name="detail"),
]
