"""Template helpers of the device pages that the catalog and report pages include."""

from __future__ import annotations

from typing import Any

from django import template
from django.utils.text import slugify

from device_registry import model_versions
from webapp.catalog.models import ModelVersion

register = template.Library()


@register.simple_tag
def eval_set_plan(version: ModelVersion) -> dict[str, Any]:
    """``{% eval_set_plan version as plan %}``: what a deploy of ``version`` measures on."""
    return model_versions.eval_set_plan(version)


@register.filter
def status_badge(status: str) -> str:
    """CSS class of a device state or deployment status badge: ``badge-online``,
    ``badge-awaiting-enrollment``, ``badge-failed`` (colours in device_registry/devices.css)."""
    return "badge-" + slugify(str(status or "unknown"))


@register.filter
def status_label(status: str) -> str:
    """A status as the pages print it: ``timed_out`` -> ``timed out``."""
    return str(status or "").replace("_", " ")
