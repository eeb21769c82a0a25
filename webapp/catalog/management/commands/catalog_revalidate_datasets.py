"""Re-validate datasets whose stored report predates the train/val/test split.

Their reports count only train and val. The catalog pages do the same per organisation when
they are opened; this command does it for every organisation at once (after an upgrade).
"""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand

from webapp.catalog.services import datasets_revalidate_stale


class Command(BaseCommand):
    help = "Queue re-validation of datasets whose report has no test split (safe to re-run)."

    def handle(self, *args: Any, **options: Any) -> None:
        count = datasets_revalidate_stale()
        self.stdout.write(f"{count} dataset(s) queued for re-validation")
