from django.urls import path

from webapp.live import views

app_name = "live"

urlpatterns = [path("test-event/", views.test_event_send, name="test_event_send")]
