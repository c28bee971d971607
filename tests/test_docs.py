"""Docs are tested like code: every command's help shows examples, every link in the docs resolves."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from rankshard.cli import main

ROOT = Path(__file__).resolve().parent.parent
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
_LINK = re.compile(r"(?<!!)\[[^\]]*\]\(([^)\s]+)\)|!\[[^\]]*\]\(([^)\s]+)\)")


def _commands(group: click.Group, path: tuple[str, ...] = ()) -> Iterator[tuple[str, ...]]:
    for name, command in sorted(group.commands.items()):
        yield (*path, name)
        if isinstance(command, click.Group):
            yield from _commands(command, (*path, name))


@pytest.mark.parametrize("path", [" ".join(p) for p in _commands(main)])
def test_every_command_help_has_examples(path: str) -> None:
    result = CliRunner().invoke(main, [*path.split(), "--help"])
    assert result.exit_code == 0, result.output
    if isinstance(main.get_command(click.Context(main), path.split()[0]), click.Group) and " " not in path:
        return  # a group's help lists its commands; each command has the examples
    assert "Examples:" in result.output, f"`rankshard {path} --help` has no Examples: block"
    examples = result.output.split("Examples:", 1)[1]
    assert re.search(rf"rankshard .*{path}", examples), f"`rankshard {path} --help`'s examples do not show the command"


def _headings(text: str) -> set[str]:
    """GitHub's anchors of a Markdown file's headings."""
    anchors = set()
    for line in text.splitlines():
        if m := re.match(r"#+\s+(.*)", line):
            slug = re.sub(r"[^\w\- ]", "", m.group(1).strip().lower()).replace(" ", "-")
            anchors.add(slug)
    return anchors


def _links() -> Iterator[tuple[Path, str]]:
    for doc in DOCS:
        text = re.sub(r"```.*?```", "", doc.read_text(), flags=re.S)
        for m in _LINK.finditer(text):
            yield doc, m.group(1) or m.group(2)


@pytest.mark.parametrize(("doc", "target"), list(_links()), ids=lambda v: str(v.name) if isinstance(v, Path) else v)
def test_every_link_resolves_inside_the_repository(doc: Path, target: str) -> None:
    if re.match(r"[a-z]+://", target):
        return  # the web is not ours to check; the repository's own files are
    path, _, anchor = target.partition("#")
    file = (doc.parent / path).resolve() if path else doc
    assert file.is_relative_to(ROOT), f"{doc.name} links outside the repository: {target}"
    assert file.exists(), f"{doc.name} links to a missing file: {target}"
    if anchor and file.suffix == ".md":
        assert anchor in _headings(file.read_text()), f"{doc.name}: no heading #{anchor} in {file.name}"
