"""Red-team: `lamina inspect -f` on an image from an untrusted registry.

The store keeps an image config's Labels and Healthcheck as the registry sent them
(any JSON). A label whose value is an array nested 600 deep (json.loads reads it)
made `inspect -f '{{.Config.Labels}}'` (and `{{json .Config}}`, `{{.Config}}`) die with
a raw RecursionError traceback; it is now a template error, which the CLI reports."""

from __future__ import annotations

import json

import pytest

from lamina.builder.cli.gotemplate import TemplateError
from lamina.builder.cli.images import InspectView
from lamina.builder.cli.inspectview import typed_inspect
from lamina.builder.cli.listing import render_objects


@pytest.mark.parametrize("template", ["{{.Config.Labels}}", '{{index .Config.Labels "k"}}',
                                      "{{json .Config}}", "{{.Config}}", "{{.Config.Healthcheck}}"])
def test_deeply_nested_image_values_are_a_template_error(template):
    deep = json.loads("[" * 600 + "]" * 600)
    obj = {"Id": "sha256:" + "0" * 64,
           "Config": {"Labels": {"k": deep}, "Healthcheck": {"Test": deep}}}
    with pytest.raises(TemplateError, match="nested too deeply"):
        render_objects(template, [InspectView(typed_inspect(obj))], json.dumps)
    # the same image prints its other fields
    assert render_objects("{{.Id}}", [InspectView(typed_inspect(obj))], json.dumps) == obj["Id"] + "\n"
