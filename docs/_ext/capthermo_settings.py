"""Sphinx directive ``capthermo-settings``: the table of a pydantic settings class, generated from the class.

The Dict inputs of the package's jobs (hyper-parameters, calculator, MD and relaxation settings) are validated by
pydantic models; this directive lists every key with its type, default, constraints and description, so the
reference cannot drift from the code::

    ```{capthermo-settings} aiida_capthermo.ml.gnn.config.GnnHyperparameters
    ```
"""

from __future__ import annotations

import importlib
import inspect

from docutils import nodes
from docutils.parsers.rst import Directive
from pydantic_core import PydanticUndefined

_CONSTRAINTS = {'gt': '>', 'ge': '≥', 'lt': '<', 'le': '≤', 'min_length': 'length ≥', 'max_length': 'length ≤'}


def _type_name(annotation) -> str:
    text = getattr(annotation, '__name__', None) if isinstance(annotation, type) else None
    text = text or str(annotation)
    return text.replace('typing.', '').replace('NoneType', 'None')


def _default(field) -> str:
    if field.default_factory is not None:
        return repr(field.default_factory())
    if field.default is PydanticUndefined:
        return 'required'
    return repr(field.default)


def _constraints(field) -> str:
    parts = []
    for item in field.metadata:
        for name, symbol in _CONSTRAINTS.items():
            value = getattr(item, name, None)
            if value is not None:
                parts.append(f'{symbol} {value}')
    return ', '.join(parts)


def _load(path: str):
    module, _, name = path.rpartition('.')
    return getattr(importlib.import_module(module), name)


class SettingsTable(Directive):
    """One row per field of the pydantic model named by the argument; the class docstring's first paragraph above."""

    required_arguments = 1
    has_content = False

    def run(self):
        model = _load(self.arguments[0])
        section = []
        doc = inspect.getdoc(model) or ''
        if doc:
            section.append(nodes.paragraph(text=doc.split('\n\n')[0].replace('\n', ' ')))
        extra = model.model_config.get('extra')
        section.append(nodes.paragraph(text=f'{model.__name__} ({self.arguments[0]}); unknown keys are '
                                            f'{"rejected" if extra == "forbid" else "ignored"}.'))
        table = nodes.table()
        group = nodes.tgroup(cols=5)
        table += group
        for width in (18, 16, 14, 14, 38):
            group += nodes.colspec(colwidth=width)
        head, body = nodes.thead(), nodes.tbody()
        group += head
        group += body
        head += self._row(['key', 'type', 'default', 'constraint', 'description'])
        for name, field in model.model_fields.items():
            body += self._row([name, _type_name(field.annotation), _default(field), _constraints(field),
                               field.description or ''], literal=(0, 2))
        section.append(table)
        return section

    @staticmethod
    def _row(cells, literal=()):
        row = nodes.row()
        for index, text in enumerate(cells):
            entry = nodes.entry()
            entry += nodes.paragraph('', '', nodes.literal(text=text) if index in literal and text else
                                     nodes.Text(text))
            row += entry
        return row


def setup(app):
    app.add_directive('capthermo-settings', SettingsTable)
    return {'version': '1', 'parallel_read_safe': True}
