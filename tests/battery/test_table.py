"""`docs/bad_inputs.md` holds the table generated from the battery's cases."""

from tests.battery.cases import CASES, DOORS
from tests.battery.table import DOCS, markdown_table, with_table


def test_docs_table_is_generated_from_the_cases():
    document = DOCS.read_text(encoding="utf-8")
    assert with_table(document, markdown_table()) == document, (
        "docs/bad_inputs.md is out of date: run python -m tests.battery.table"
    )


def test_table_has_a_row_per_case_and_a_column_per_door():
    rows = [line for line in markdown_table().splitlines() if line.startswith("| `")]
    assert len(rows) == len(CASES)
    assert all(row.count(" | ") == len(DOORS) for row in rows)
