"""Just enough of a Dockerfile and .dockerignore reader to check them against the manifests.

Docker cannot run on the development machines, so the image is kept honest by reading
its recipe: instructions (with line continuations and comments), stages, build-argument
defaults in FROM, and the .dockerignore rules of the build context.
"""

from __future__ import annotations

import json
import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path

__all__ = [
    "Dockerfile",
    "IgnoreRules",
    "Instruction",
    "Stage",
    "parse_dockerfile",
    "parse_dockerignore",
]


@dataclass(frozen=True)
class Instruction:
    keyword: str  # upper case: FROM, RUN, COPY, ...
    args: str  # the rest of the instruction, continuation lines joined

    def exec_form(self) -> list[str] | None:
        """The JSON array of CMD/ENTRYPOINT/RUN, or None for the shell form."""
        text = self.args.strip()
        if not text.startswith("["):
            return None
        parsed = json.loads(text)
        if not isinstance(parsed, list) or not all(isinstance(p, str) for p in parsed):
            raise ValueError(f"{self.keyword} is not a JSON array of strings: {text}")
        return parsed

    def words(self) -> list[str]:
        return shlex.split(self.args)


@dataclass
class Stage:
    base: str
    name: str | None
    instructions: list[Instruction] = field(default_factory=list)

    def all(self, keyword: str) -> list[Instruction]:
        return [i for i in self.instructions if i.keyword == keyword]

    def last(self, keyword: str) -> Instruction | None:
        found = self.all(keyword)
        return found[-1] if found else None


@dataclass
class Dockerfile:
    global_args: dict[str, str]
    stages: list[Stage]

    @property
    def final(self) -> Stage:
        return self.stages[-1]

    def instructions(self) -> list[Instruction]:
        return [i for s in self.stages for i in s.instructions]


def _logical_lines(text: str) -> list[str]:
    lines: list[str] = []
    current = ""
    for raw in text.splitlines():
        stripped = raw.strip()
        if not stripped or stripped.startswith("#"):
            # Comments (parser directives included) and blank lines, also inside a
            # continued instruction, where Docker drops them too.
            continue
        if stripped.endswith("\\"):
            current += stripped[:-1].rstrip() + " "
            continue
        current += stripped
        if current.strip():
            lines.append(current.strip())
        current = ""
    if current.strip():
        raise ValueError("the Dockerfile ends inside a continued line")
    return lines


_VAR = re.compile(r"\$(?:\{(\w+)\}|(\w+))")


def _substitute(text: str, args: dict[str, str]) -> str:
    def value(match: re.Match[str]) -> str:
        key = match.group(1) or match.group(2)
        if key not in args:
            raise KeyError(f"build argument {key} has no default")
        return args[key]

    return _VAR.sub(value, text)


def parse_dockerfile(text: str) -> Dockerfile:
    global_args: dict[str, str] = {}
    stages: list[Stage] = []
    for line in _logical_lines(text):
        keyword, _, rest = line.partition(" ")
        keyword = keyword.upper()
        rest = rest.strip()
        if keyword == "FROM":
            words = [w for w in rest.split() if not w.startswith("--platform")]
            base = _substitute(words[0], global_args)
            name = words[2] if len(words) >= 3 and words[1].upper() == "AS" else None
            stages.append(Stage(base=base, name=name))
        elif not stages:
            if keyword != "ARG":
                raise ValueError(f"{keyword} before the first FROM")
            arg_name, _, default = rest.partition("=")
            global_args[arg_name.strip()] = default.strip().strip("\"'")
        else:
            stages[-1].instructions.append(Instruction(keyword, rest))
    if not stages:
        raise ValueError("no FROM in the Dockerfile")
    return Dockerfile(global_args, stages)


@dataclass(frozen=True)
class _Rule:
    regex: re.Pattern[str]
    exclude: bool


def _pattern_regex(pattern: str) -> re.Pattern[str]:
    out = ""
    i = 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out += "(?:.*/)?"
            i += 3
        elif pattern.startswith("**", i):
            out += ".*"
            i += 2
        elif pattern[i] == "*":
            out += "[^/]*"
            i += 1
        elif pattern[i] == "?":
            out += "[^/]"
            i += 1
        elif pattern[i] == "[":
            end = pattern.index("]", i)
            out += pattern[i : end + 1]
            i = end + 1
        else:
            out += re.escape(pattern[i])
            i += 1
    return re.compile(out + r"\Z")


@dataclass(frozen=True)
class IgnoreRules:
    """.dockerignore semantics: the last rule that matches a path, or any of its parent
    folders, decides; ``!`` rules re-include."""

    rules: tuple[_Rule, ...]

    def excluded(self, path: str) -> bool:
        parts = Path(path).parts
        candidates = ["/".join(parts[: n + 1]) for n in range(len(parts))]
        verdict = False
        for rule in self.rules:
            if any(rule.regex.match(c) for c in candidates):
                verdict = rule.exclude
        return verdict


def parse_dockerignore(text: str) -> IgnoreRules:
    rules: list[_Rule] = []
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        exclude = not line.startswith("!")
        pattern = line.lstrip("!").strip().strip("/")
        pattern = pattern.removeprefix("./")
        rules.append(_Rule(_pattern_regex(pattern), exclude))
    return IgnoreRules(tuple(rules))
