"""One number, one meaning: every exit code of every capthermo process comes from the package's table, no number
has two names, aiida-core's numbers are left to aiida-core, and docs/exit-codes.md is the table as it is."""

from __future__ import annotations

import collections
import pathlib

from aiida_capthermo.exit_codes import EXIT_CODES, RESERVED, TABLE, markdown, process_exit_codes


def test_every_process_takes_its_numbers_from_the_table():
    rows = process_exit_codes()
    assert len({row['process'] for row in rows}) >= 20  # every calculation and workflow entry point was loaded
    wrong = [row for row in rows if EXIT_CODES.get(row['name']) != row['status']]
    assert not wrong, wrong
    names = collections.defaultdict(set)
    for row in rows:
        names[row['status']].add(row['name'])
    assert {status: found for status, found in names.items() if len(found) > 1} == {}
    assert not {row['status'] for row in rows} & RESERVED
    assert len(set(EXIT_CODES.values())) == len(EXIT_CODES)  # the table itself: one name per number
    assert set(EXIT_CODES) == {row['name'] for row in rows}  # no entry that no process uses
    assert all(meaning and status in range(300, 600) for status, meaning in TABLE.values())


def test_the_docs_page_is_the_table():
    page = pathlib.Path(__file__).parents[1] / 'docs' / 'exit-codes.md'
    assert page.read_text() == markdown(), 'regenerate: python -m aiida_capthermo.exit_codes > docs/exit-codes.md'
