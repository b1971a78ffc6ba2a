"""What a newcomer reads and runs: links resolve inside the repository, the compose file and the image say
what the service needs (issue 23)."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LINK = re.compile(r"\]\(([^)#\s]+)(?:#[^)]*)?\)")


def _markdown() -> list[Path]:
    return [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]


def test_every_relative_link_resolves_inside_the_repository() -> None:
    bad = []
    for md in _markdown():
        for target in LINK.findall(md.read_text()):
            if re.match(r"^[a-z]+:", target):
                continue
            path = (md.parent / target).resolve()
            if not path.exists() or (ROOT not in path.parents and path != ROOT):
                bad.append(f"{md.relative_to(ROOT)} → {target}")
    assert not bad, bad


def test_compose_and_image_match_the_service() -> None:
    compose = (ROOT / "docker-compose.yml").read_text()
    assert "32+ characters" in compose and "16+" not in compose  # the service refuses shorter admin keys
    for mount in re.findall(r"^\s*- \./([\w.-]+):", compose, flags=re.M):  # bind mounts must exist in a clone
        assert (ROOT / mount).exists(), f"compose mounts ./{mount}, which a fresh clone does not have"
    health = next(ln for ln in (ROOT / "Dockerfile").read_text().splitlines() if ln.startswith("HEALTHCHECK"))
    assert "--start-period=" in health  # the first start trains a model before it answers


def test_the_readme_documents_what_ci_sets() -> None:
    readme = (ROOT / "README.md").read_text()
    ci = (ROOT / ".ci" / "run").read_text()
    for var in re.findall(r"export (UNLEARND_\w+)=", ci):
        assert var in readme, f"{var} is set by .ci/run but the README never mentions it"
    assert "<id>" not in readme, "a `<id>` placeholder is a shell syntax error when pasted"
    assert "subject-0003" not in readme or "subject-0000" in readme  # where the demo's subjects come from


def test_method_md_says_what_make_run_runs() -> None:
    method = (ROOT / "docs" / "method.md").read_text()
    demo = next(ln for ln in method.splitlines() if ln.startswith("| `demo`"))
    assert "make run" not in demo, demo  # `make run` is `unlearnd serve`; demo is the ML core alone
    assert "unlearnd serve" in (ROOT / "Makefile").read_text().split("run:", 1)[1].split("\n\n", 1)[0]
