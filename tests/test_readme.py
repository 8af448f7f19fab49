"""The README's commands are the ones CI runs."""

from conftest import REPO


def test_ci_runs_the_readme_test_command():
    readme = (REPO / "README.md").read_text()
    ci_lines = (REPO / ".ci" / "run").read_text().splitlines()
    command = next(line for line in ci_lines if "pytest" in line)
    assert command in readme


def test_readme_default_job_command_runs_run_py():
    readme = (REPO / "README.md").read_text()
    assert ".venv/bin/python run.py\n" in readme
