from django.urls import path

from webapp.sensitivity import views

app_name = "sensitivity"

urlpatterns = [
    path("", views.analysis_list, name="list"),
    path("<int:pk>/", views.analysis_detail, name="detail"),
    path("<int:pk>/to-wizard/", views.analysis_to_wizard, name="to_wizard"),
]
