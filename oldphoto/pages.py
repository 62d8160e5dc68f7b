"""HTML pages from the package's Jinja2 templates (oldphoto/templates), escaped."""

from __future__ import annotations

import functools
from typing import Any

import jinja2


@functools.cache
def _environment() -> jinja2.Environment:
    return jinja2.Environment(loader=jinja2.PackageLoader("oldphoto", "templates"), autoescape=True,
                              trim_blocks=True, lstrip_blocks=True)


def render(template: str, **context: Any) -> str:
    return _environment().get_template(template).render(**context)
