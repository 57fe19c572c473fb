"""The documentation holds together: README.md and docs/*.md link only to what exists, down to the
section; a file that names a docs/ page names one that is there (and its section, when it names
one); and nothing in the repository sends the reader to what is not in it."""

import re
import subprocess

import pytest

from harness import REPO

DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
FENCE = re.compile(r"^\s*(```|~~~)")


def prose_lines(text: str) -> list[str]:
    """The lines outside fenced code blocks (a `# comment` in a shell block is not a heading)."""
    lines, fenced = [], False
    for line in text.splitlines():
        if FENCE.match(line):
            fenced = not fenced
        elif not fenced:
            lines.append(line)
    return lines


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces as hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def anchors(path) -> set[str]:
    seen: dict[str, int] = {}
    result = set()
    for line in prose_lines(path.read_text()):
        if match := re.match(r"#{1,6}\s+(.*)", line):
            base = slug(match.group(1))
            count = seen.get(base, 0)
            seen[base] = count + 1
            result.add(base if count == 0 else f"{base}-{count}")
    return result


def headings(path) -> set[str]:
    return {m.group(1).strip() for line in prose_lines(path.read_text()) if (m := re.match(r"#{1,6}\s+(.*)", line))}


def tracked_text_files() -> list:
    names = subprocess.run(["git", "ls-files", "-z"], cwd=REPO, capture_output=True, text=True, check=True).stdout
    files = []
    for name in filter(None, names.split("\0")):
        path = REPO / name
        try:
            files.append((name, path.read_text()))
        except (UnicodeDecodeError, FileNotFoundError, IsADirectoryError):
            continue
    return files


def test_readme_is_for_the_person_who_deploys_and_short():
    assert len((REPO / "README.md").read_text().splitlines()) <= 250


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.relative_to(REPO).as_posix())
def test_every_relative_link_and_section_it_names_exists(doc):
    dead = []
    for line in prose_lines(doc.read_text()):
        for target in LINK.findall(line):
            if re.match(r"[a-z]+:", target):  # https:, mailto:
                continue
            path, _, anchor = target.partition("#")
            file = (doc.parent / path).resolve() if path else doc
            if not file.exists():
                dead.append(f"{target}: no such file")
            elif anchor and file.suffix == ".md" and anchor not in anchors(file):
                dead.append(f"{target}: no section #{anchor} in {file.relative_to(REPO)}")
    assert dead == []


def test_a_docs_page_named_anywhere_exists_with_the_section_named():
    """E.g. a code comment's `(docs/day2.md, "Rotate a DKIM key")`."""
    dead = []
    for name, text in tracked_text_files():
        for page, section in re.findall(r"\bdocs/([\w-]+\.md)(?:,? \"([^\"]+)\")?", text):
            path = REPO / "docs" / page
            if not path.exists():
                dead.append(f"{name}: docs/{page}")
            elif section and section not in headings(path):
                dead.append(f"{name}: docs/{page}, \"{section}\"")
    assert dead == []


# Spelt in pieces so that this file does not match itself.
OUTSIDE = [re.compile(pattern, re.IGNORECASE) for pattern in (
    r"\.\./" + "shared",
    "shared" + "/guide",
    r"\bissue" + r"s? #?\d+",
    r"\bthe issue" + r"'s\b",
)]


def test_nothing_refers_to_what_is_not_in_the_repository():
    found = [f"{name}:{number}: {line.strip()}"
             for name, text in tracked_text_files()
             for number, line in enumerate(text.splitlines(), 1)
             if any(pattern.search(line) for pattern in OUTSIDE)]
    assert found == []



# The signer's steps change with the signer itself; they get their header then.
WITHOUT_HEADER_YET = {"signer.sh.j2", "dkim_keys.sh.j2", "dkim_keys_delete.sh.j2"}
STEP_TEMPLATES = sorted(p.name for p in (REPO / "templates" / "steps").glob("*.sh.j2"))


@pytest.mark.parametrize("template", [name for name in STEP_TEMPLATES if name not in WITHOUT_HEADER_YET])
def test_every_step_template_opens_with_what_it_converges_restarts_and_deletes(template):
    first = (REPO / "templates" / "steps" / template).read_text().splitlines()[:3]
    # Jinja comments: the header documents the template and leaves the rendered step as it was.
    assert [line.split(":", 1)[0] for line in first] == ["<%# Converges", "<%# Restarts", "<%# Delete"], first
    assert all(line.endswith("#%>") for line in first), first
