from django.apps import AppConfig


class AccountsConfig(AppConfig):
    name = "webapp.accounts"
    label = "accounts"
    verbose_name = "Accounts and organisations"

    def ready(self) -> None:
        # Connects the signals that tell open browser sockets when access changes.
        from webapp.accounts import access  # noqa: F401
