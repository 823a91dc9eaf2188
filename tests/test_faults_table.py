"""docs/faults.md names, for each fault, the tests that show it: every one of them must exist where it says."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def cited_tests() -> list[tuple[str, str]]:
    """(test file, test name) for every test the page cites: `file.py::name` in the fault tables, a bare `test_name`
    of tests/test_invariants.py in the section on silent slips."""
    faults, _, slips = (ROOT / "docs" / "faults.md").read_text().partition("## Silent slips")
    cited = re.findall(r"`(test_\w+\.py)::(\w+)`", faults)
    cited += [("test_invariants.py", name) for name in re.findall(r"`(test_\w+)`", slips)]
    return cited


def test_every_test_the_fault_table_cites_exists():
    cited = cited_tests()
    assert len(cited) > 60
    missing = [f"{file}::{name}" for file, name in cited if f"def {name}(" not in (ROOT / "tests" / file).read_text()]
    assert not missing, missing
