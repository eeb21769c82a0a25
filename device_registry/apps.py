from django.apps import AppConfig


class DeviceRegistryConfig(AppConfig):
    name = "device_registry"
    label = "device_registry"
    verbose_name = "Edge devices"
    default_auto_field = "django.db.models.BigAutoField"
