"""Catalog pages. The list pages keep the project-wide names ``models`` and ``datasets`` (the nav
links to them) and are mounted by ``webapp/urls.py``; the item pages live here."""

from django.urls import path

from webapp.catalog import views

app_name = "catalog"

urlpatterns = [
    path("models/new-from-zoo/", views.model_zoo_create, name="model_zoo_create"),
    path("models/<int:pk>/", views.model_version_detail, name="model_version_detail"),
    path("models/<int:pk>/download/", views.model_version_download, name="model_version_download"),
    path("models/<int:pk>/delete/", views.model_version_delete, name="model_version_delete"),
    path("datasets/<int:pk>/", views.dataset_detail, name="dataset_detail"),
    path(
        "datasets/<int:pk>/thumbnails/<int:class_index>/<int:n>.png",
        views.dataset_thumbnail,
        name="dataset_thumbnail",
    ),
    path("datasets/<int:pk>/delete/", views.dataset_delete, name="dataset_delete"),
]
