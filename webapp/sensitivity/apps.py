from django.apps import AppConfig


class SensitivityConfig(AppConfig):
    name = "webapp.sensitivity"
    label = "sensitivity"
    verbose_name = "Layer sensitivity"
