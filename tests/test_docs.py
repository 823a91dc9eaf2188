"""The repository's documents stand alone: its design page is inside it and cited, it has a licence, and its
packages declare their type hints."""

import pathlib

import pytest

tomllib = pytest.importorskip("tomllib")  # Python 3.11+

ROOT = pathlib.Path(__file__).resolve().parents[1]
SOURCES = [p for d in ("kernels", "models", "distill", "bench", "tests", "docs") for p in (ROOT / d).rglob("*.py")]
SOURCES += [*(ROOT / "docs").glob("*.md"), ROOT / "README.md", ROOT / "pyproject.toml"]


def test_no_document_outside_the_repository_is_cited():
    design = "DESIGN" + ".md"  # spelt in two parts so that this file does not cite it either
    citing = [str(p.relative_to(ROOT)) for p in SOURCES if design in p.read_text()]
    assert citing == []
    assert (ROOT / "docs" / "design.md").is_file()
    assert "docs/design.md" in (ROOT / "README.md").read_text()


def test_licence_and_the_digits_notice():
    licence = (ROOT / "LICENSE").read_text()
    assert licence.startswith("MIT License") and "CC BY 4.0" in licence and "digits.npz" in licence
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert project["license"]["text"] == "MIT"


def test_packages_declare_type_hints():
    package_data = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]
    for package in ("models", "distill"):
        assert (ROOT / package / "py.typed").is_file() and "py.typed" in package_data[package]
