"""Run a GitHub Actions workflow's jobs here, step by step, as a runner would.

GitHub's runners cannot run here, but what the workflow's `run:` steps do can: each job
runs in a clean clone of the repository at the pushed commit, its `run:` steps in order
with bash (`bash --noprofile --norc -eo pipefail`, GitHub's default), GITHUB_OUTPUT,
GITHUB_ENV, GITHUB_SHA and the other GITHUB_* variables set, and `${{ }}` expressions
resolved from a test context (github, secrets, vars, steps, needs, env). `uses:` steps are
stubbed: checkout is the clean clone itself, setup-python puts a Python first on PATH
whose `pip install .` works offline (its packages are this project's venv's). Job `if:`
conditions and outputs are evaluated like GitHub's, for the expression forms our
workflows use (property paths, string literals, ==, !=, &&, ||, !, always(), success()).

So the workflows' own build, push and `fab deploy` lines really run, against the loopback
registry and SSH host of the remote tier.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from tests.harness.core import ROOT

SHELL = ["bash", "--noprofile", "--norc", "-eo", "pipefail"]
EXPR = re.compile(r"\$\{\{\s*(.*?)\s*\}\}", re.S)


class WorkflowError(AssertionError):
    pass


# --- expressions ------------------------------------------------------------------------

_TOKEN = re.compile(
    r"\s*(?:(?P<str>'(?:[^']|'')*')|(?P<op>==|!=|&&|\|\||!|\(|\))|"
    r"(?P<call>[A-Za-z_][\w-]*\(\))|(?P<path>[A-Za-z_][\w.-]*)|(?P<num>\d+))"
)


def _lookup(path: str, context: dict):
    value = context
    for part in path.split("."):
        if isinstance(value, dict):
            value = value.get(part, "")
        else:
            return ""
    return value


def evaluate(expr: str, context: dict, status: str = "success"):
    tokens: list[tuple[str, str]] = []
    pos = 0
    while pos < len(expr):
        m = _TOKEN.match(expr, pos)
        if not m or m.end() == pos:
            if expr[pos:].strip() == "":
                break
            raise WorkflowError(f"expression not understood here: {expr!r} at {pos}")
        kind = m.lastgroup
        tokens.append((kind, m.group(kind)))
        pos = m.end()
    it = iter(tokens + [("end", "")])
    cur = [next(it)]

    def take():
        tok = cur[0]
        cur[0] = next(it, ("end", ""))
        return tok

    def primary():
        kind, text = take()
        if kind == "str":
            return text[1:-1].replace("''", "'")
        if kind == "num":
            return int(text)
        if kind == "path":
            return {"true": True, "false": False}.get(text, _lookup(text, context))
        if kind == "call":
            name = text[:-2]
            if name == "always":
                return True
            if name == "success":
                return status == "success"
            if name == "failure":
                return status == "failure"
            if name == "cancelled":
                return False
            raise WorkflowError(f"function {name}() is not supported by the harness")
        if text == "(":
            value = disjunction()
            if take()[1] != ")":
                raise WorkflowError(f"missing ) in {expr!r}")
            return value
        if text == "!":
            return not primary()
        raise WorkflowError(f"unexpected {text or 'end'!r} in {expr!r}")

    def comparison():
        left = primary()
        while cur[0][1] in ("==", "!="):
            op = take()[1]
            right = primary()
            same = str(left).lower() == str(right).lower()
            left = same if op == "==" else not same
        return left

    def chain(operand, op: str, pick):
        """`operand (op operand)*`, left to right; `pick(left, right)` gives the value."""

        def parse():
            left = operand()
            while cur[0][1] == op:
                take()
                left = pick(left, operand())
            return left

        return parse

    # && and || give one of their operands, as GitHub's do, not a boolean
    conjunction = chain(comparison, "&&", lambda left, right: right if left else left)
    disjunction = chain(conjunction, "||", lambda left, right: left if left else right)

    value = disjunction()
    if cur[0][0] != "end":
        raise WorkflowError(f"trailing {cur[0][1]!r} in {expr!r}")
    return value


def render(text: str, context: dict) -> str:
    def sub(m: re.Match) -> str:
        value = evaluate(m.group(1), context)
        if isinstance(value, bool):
            return "true" if value else "false"
        return str(value)

    return EXPR.sub(sub, str(text))


def condition(text, context: dict, status: str) -> bool:
    if text is None:
        return status == "success"
    raw = str(text).strip()
    m = EXPR.fullmatch(raw)
    expr = m.group(1) if m else raw
    uses_status = re.search(r"\b(always|success|failure|cancelled)\(\)", expr)
    value = bool(evaluate(expr, context, status))
    return value if uses_status else value and status == "success"


# --- running jobs ---------------------------------------------------------------------


@dataclass
class StepResult:
    name: str
    ran: bool
    exit_code: int = 0
    output: str = ""


@dataclass
class JobResult:
    name: str
    ran: bool
    ok: bool = True
    outputs: dict[str, str] = field(default_factory=dict)
    steps: list[StepResult] = field(default_factory=list)

    @property
    def result(self) -> str:
        return "skipped" if not self.ran else ("success" if self.ok else "failure")

    def transcript(self) -> str:
        lines = [f"job {self.name}: {self.result}"]
        for s in self.steps:
            state = "skipped" if not s.ran else f"exit {s.exit_code}"
            lines.append(f"  - {s.name}: {state}")
            lines += [f"      {line}" for line in s.output.rstrip().splitlines()[-40:]]
        return "\n".join(lines)


@dataclass
class Runner:
    """One workflow run: `github`, `secrets` and `vars` as GitHub would give them."""

    workflow: Path
    origin: Path  # the repository pushed to
    sha: str
    base: Path
    github: dict
    secrets: dict
    vars: dict
    runner_env: dict = field(default_factory=dict)  # what the runner machine has in its env
    # jobs the harness does not run but counts as passed: the test job, which is this
    # very suite
    assume_passed: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        self.spec = yaml.safe_load(self.workflow.read_text())
        self.jobs: dict[str, JobResult] = {}

    def _context(self, job: str, steps: dict, env: dict) -> dict:
        needs = {name: {"result": r.result, "outputs": r.outputs} for name, r in self.jobs.items()}
        return {
            "github": self.github,
            "secrets": self.secrets,
            "vars": self.vars,
            "steps": steps,
            "needs": needs,
            "env": env,
            "runner": {"temp": str(self.base / job / "tmp"), "os": "Linux"},
        }

    def _needs(self, job: str) -> list[str]:
        needs = self.spec["jobs"][job].get("needs") or []
        return [needs] if isinstance(needs, str) else list(needs)

    def run(self) -> dict[str, JobResult]:
        """Every job in dependency order; returns the results by job name."""
        pending = list(self.spec["jobs"])
        while pending:
            ready = [j for j in pending if all(n in self.jobs for n in self._needs(j))]
            if not ready:
                raise WorkflowError(f"jobs waiting on each other: {pending}")
            for job in ready:
                pending.remove(job)
                self.jobs[job] = self.run_job(job)
        return self.jobs

    def run_job(self, job: str) -> JobResult:
        spec = self.spec["jobs"][job]
        needs = self._needs(job)
        status = "success" if all(self.jobs[n].ok and self.jobs[n].ran for n in needs) else (
            "failure" if any(self.jobs[n].ran and not self.jobs[n].ok for n in needs)
            else "skipped"
        )  # fmt: skip
        context = self._context(job, {}, {})
        if status == "skipped" and not _mentions_status(spec.get("if")):
            return JobResult(job, ran=False)
        if not condition(spec.get("if"), context, "success" if status == "skipped" else status):
            return JobResult(job, ran=False)
        if job in self.assume_passed:
            return JobResult(job, ran=True, steps=[StepResult("(counted as passed)", False)])

        home = self.base / job / "home"
        work = self.base / job / "work"
        tmp = self.base / job / "tmp"
        for d in (home, tmp):
            d.mkdir(parents=True, exist_ok=True)
        subprocess.run(["git", "clone", "-q", str(self.origin), str(work)], check=True)
        subprocess.run(["git", "-C", str(work), "checkout", "-q", "--detach", self.sha],
                       check=True)  # fmt: skip
        # docker finds its CLI plugins (compose) under $HOME/.docker, and the job has a
        # home of its own (it writes ~/.ssh)
        plugins = Path.home() / ".docker" / "cli-plugins"
        if plugins.is_dir():
            (home / ".docker").mkdir(exist_ok=True)
            (home / ".docker" / "cli-plugins").symlink_to(plugins)
        output_file, env_file = tmp / "github_output", tmp / "github_env"
        base_env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "LANG": "C.UTF-8",
            **self.runner_env,
            "HOME": str(home),
            "CI": "true",
            "GITHUB_ACTIONS": "true",
            "GITHUB_SHA": self.sha,
            "GITHUB_REF": self.github.get("ref", ""),
            "GITHUB_REPOSITORY": self.github.get("repository", ""),
            "GITHUB_ACTOR": self.github.get("actor", ""),
            "GITHUB_RUN_ID": str(self.github.get("run_id", "")),
            "GITHUB_EVENT_NAME": self.github.get("event_name", "push"),
            "GITHUB_WORKSPACE": str(work),
            "GITHUB_JOB": job,
            "RUNNER_TEMP": str(tmp),
            "GITHUB_OUTPUT": str(output_file),
            "GITHUB_ENV": str(env_file),
        }
        workflow_env = {k: render(v, context) for k, v in (self.spec.get("env") or {}).items()}
        job_env = {k: render(v, context) for k, v in (spec.get("env") or {}).items()}
        result = JobResult(job, ran=True)
        steps_ctx: dict[str, dict] = {}
        added_env: dict[str, str] = {}
        step_status = "success"
        for i, step in enumerate(spec.get("steps") or []):
            name = step.get("name") or step.get("uses") or f"step {i + 1}"
            env_ctx = {**workflow_env, **job_env, **added_env}
            ctx = self._context(job, steps_ctx, env_ctx)
            if not condition(step.get("if"), ctx, step_status):
                result.steps.append(StepResult(name, ran=False))
                continue
            if "uses" in step:
                result.steps.append(self._stub(step["uses"], tmp, base_env))
                continue
            output_file.write_text("")
            env_file.write_text("")
            step_env = {k: render(v, ctx) for k, v in (step.get("env") or {}).items()}
            script = tmp / f"step-{i + 1}.sh"
            script.write_text(render(step["run"], ctx))
            proc = subprocess.run(
                [*SHELL, str(script)],
                cwd=work / step.get("working-directory", "."),
                env={**base_env, **env_ctx, **step_env},
                capture_output=True,
                text=True,
                timeout=3600,
            )
            result.steps.append(StepResult(name, True, proc.returncode, proc.stdout + proc.stderr))
            outputs = _read_pairs(output_file.read_text())
            added_env.update(_read_pairs(env_file.read_text()))
            if "id" in step:
                steps_ctx[step["id"]] = {
                    "outputs": outputs,
                    "outcome": "success" if proc.returncode == 0 else "failure",
                }
            if proc.returncode != 0 and not step.get("continue-on-error"):
                step_status = "failure"
                result.ok = False
        ctx = self._context(job, steps_ctx, {**workflow_env, **job_env, **added_env})
        result.outputs = {k: render(v, ctx) for k, v in (spec.get("outputs") or {}).items()}
        return result

    def _stub(self, uses: str, tmp: Path, base_env: dict) -> StepResult:
        action = uses.split("@", 1)[0]
        if action == "actions/checkout":
            return StepResult(uses, True, 0, "(the job's clean clone)")
        if action == "actions/setup-python":
            venv = tmp / "python"
            subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)],
                           check=True)  # fmt: skip
            # the project's venv's packages (pip, setuptools and the toolkit's dependencies)
            # back this Python, so `pip install .` needs no network
            site = next((venv / "lib").glob("python3*/site-packages"))
            ours = next((ROOT / ".venv" / "lib").glob("python3*/site-packages"))
            (site / "aiia-harness.pth").write_text(f"{ours}\n")
            # console scripts of the packages it lends (pip installs only what is missing)
            fab = venv / "bin" / "fab"
            fab.write_text(f"#!{venv / 'bin' / 'python'}\nfrom fabric.main import program\n"
                           "program.run()\n")  # fmt: skip
            fab.chmod(0o755)
            base_env["PATH"] = f"{venv / 'bin'}:{base_env['PATH']}"
            base_env["PIP_NO_INDEX"] = "1"
            base_env["PIP_NO_BUILD_ISOLATION"] = "0"  # pip reads "0" as "no isolation"
            base_env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
            return StepResult(uses, True, 0, f"(python: {venv})")
        raise WorkflowError(f"no stub for `uses: {uses}`: add one to tests/remote/workflows.py")


def _mentions_status(text) -> bool:
    return bool(text) and bool(re.search(r"\b(always|failure|cancelled)\(\)", str(text)))


def _read_pairs(text: str) -> dict[str, str]:
    """NAME=value lines and NAME<<DELIM heredocs, as GITHUB_OUTPUT and GITHUB_ENV hold."""
    pairs: dict[str, str] = {}
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        line = lines[i]
        if "<<" in line and "=" not in line.split("<<", 1)[0]:
            name, delim = line.split("<<", 1)
            body = []
            i += 1
            while i < len(lines) and lines[i] != delim:
                body.append(lines[i])
                i += 1
            pairs[name] = "\n".join(body)
        elif "=" in line:
            name, value = line.split("=", 1)
            pairs[name] = value
        i += 1
    return pairs
