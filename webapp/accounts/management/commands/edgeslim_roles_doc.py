"""``edgeslim manage edgeslim_roles_doc``: rewrite the generated table of ``docs/roles.md`` from
the access every page and API view declares (``--check``: only say whether it is current)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from webapp.accounts.roles_doc import END, START, roles_markdown, undeclared, write_roles_page


class Command(BaseCommand):
    help = __doc__

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--path", default="docs/roles.md", help="the page to rewrite")
        parser.add_argument(
            "--check", action="store_true", help="exit 1 when the page is not current"
        )

    def handle(self, *args: Any, **options: Any) -> None:
        missing = undeclared()
        if missing:
            names = ", ".join(f"{r.name} (/{r.path})" for r in missing)
            raise CommandError(f"These routes declare no access: {names}")
        path = Path(options["path"])
        if options["check"]:
            page = path.read_text()
            block = page[page.index(START) : page.index(END) + len(END)] + "\n"
            if block != roles_markdown():
                raise CommandError(f"{path} is not current; run edgeslim_roles_doc")
            self.stdout.write(f"{path} is current.")
            return
        write_roles_page(path)
        self.stdout.write(f"{path} rewritten.")
