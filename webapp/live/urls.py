from django.urls import path

from webapp.live import views

app_name = "live"

urlpatterns = [path("activity/", views.activity, name="activity")]
