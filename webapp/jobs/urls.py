from django.urls import path

from webapp.jobs import views

app_name = "jobs"

urlpatterns = [
    path("", views.job_list, name="list"),
    path("new/", views.wizard_start, name="new"),
    path("new/from-file/", views.job_from_file, name="from_file"),
    path("new/<slug:step>/", views.wizard, name="wizard"),
    path("<int:pk>/", views.job_detail, name="detail"),
    path("<int:pk>/live/", views.job_live_regions, name="live_regions"),
    path("<int:pk>/cancel/", views.job_cancel, name="cancel"),
    path("<int:pk>/duplicate/", views.job_duplicate, name="duplicate"),
    path("<int:pk>/edit/", views.job_edit_as_new, name="edit_as_new"),
    path("<int:pk>/artifacts/<str:key>", views.job_artifact, name="artifact"),
]
