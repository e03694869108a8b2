import re
import shlex

import pytest

from pipeline.common.settings_doc import env_rows
from pipeline.worker.settings import WorkerSettings
from tests.support.cli import check_command_line
from tests.support.tools import ROOT
from trainer.settings import TrainerSettings

README = (ROOT / "README.md").read_text()


def test_every_setting_is_documented_in_the_readme():
    rows = env_rows(WorkerSettings, "PIPELINE_") + env_rows(TrainerSettings, "TRAINER_")
    missing = [env for env, _, _ in rows if f"`{env}`" not in README]
    assert not missing, f"run `python -m pipeline settings-doc` and update README: {missing}"
    undescribed = [env for env, _, desc in rows if not desc]
    assert not undescribed, f"settings without a description: {undescribed}"


def test_readme_gives_exactly_the_two_setup_commands():
    assert "make demo" in README and "make test" in README


DOCS = [ROOT / "README.md", ROOT / "CONTRIBUTING.md", *sorted((ROOT / "docs").glob("*.md"))]
SHELL_FENCES = {"bash", "sh", "shell", "console"}
INLINE = re.compile(r"`(python -m [^`]+)`")
COMMAND = re.compile(r"python -m (?:pipeline|trainer)\b[^|>;&#`]*")


def shell_snippets(text: str) -> list[str]:
    """Lines of the shell code blocks (fenced or indented; continuations joined) and inline
    code spans."""
    snippets: list[str] = []
    fence: str | None = None
    for line in text.replace("\\\n", " ").splitlines():
        if line.startswith("```"):
            fence = None if fence is not None else line[3:].strip()
        elif fence is None and line.startswith("    "):
            snippets.append(line)
        elif fence is None:
            snippets += INLINE.findall(line)
        elif fence in SHELL_FENCES:
            snippets.append(line)
    return snippets


def documented_command_lines() -> list[tuple[str, list[str]]]:
    """Every ``python -m pipeline|trainer ...`` command of the docs, as argv, cut at pipes,
    redirections and comments. Usage synopses (``[--option V]``) are left out."""
    found = []
    for doc in DOCS:
        for snippet in shell_snippets(doc.read_text()):
            for match in COMMAND.finditer(snippet):
                command = match.group(0).strip().rstrip(")")
                if "[" not in command and "..." not in command:
                    found.append((f"{doc.name}: {command}", shlex.split(command)))
    return found


def test_the_docs_show_commands():
    assert len(documented_command_lines()) > 15


@pytest.mark.parametrize(("where", "argv"), documented_command_lines(), ids=lambda v: str(v)[:60])
def test_every_documented_command_line_parses(where, argv):
    """A bare command name (``python -m trainer evaluate`` in prose) only has to exist."""
    check_command_line(argv, parse_args=any(a.startswith("-") for a in argv[3:]))
