"""What every source module offers (`Source`), and `FilePattern`: one spec that both parses and composes names.

satpy's readers declare their file names as trollsift patterns for the same reason; trollsift is not a
dependency of nrt, and the subset needed here (str, zero-padded int and strftime fields) is short.
"""

from __future__ import annotations

import re
import string
from collections.abc import Mapping
from datetime import datetime
from pathlib import Path
from typing import Any, Protocol

from nrt.sources import RemoteFile

# Digits each strftime directive used in file names takes.
_DIRECTIVES = {"%Y": r"\d{4}", "%m": r"\d{2}", "%d": r"\d{2}", "%H": r"\d{2}", "%M": r"\d{2}", "%S": r"\d{2}", "%j": r"\d{3}"}
_INT_SPEC = re.compile(r"0(\d+)d")


class FilePattern:
    """A file name as a `str.format` template whose fields parse back.

    Fields are strings matching the regex given for them, zero-padded integers (`{minutes:04d}`) or
    datetimes in strftime directives (`{start:%Y%m%d}`); a datetime may be spread over several fields of the
    same name (`{start:%Y%m%d}-S{start:%H%M%S}`), which parse back into one value. A part in square brackets
    is optional (`[.{orbit:06d}]`): it parses to None-valued fields when absent and is left out of a name
    composed with any of its fields None. `fullmatch` groups carry the field names (the first occurrence).
    """

    def __init__(self, template: str, **fields: str):
        self.template = template
        self._sections = [(text, optional) for text, optional in _sections(template) if text]
        self._specs: list[tuple[str, str]] = []
        parts, seen = [], {}
        for text, optional in self._sections:
            section = []
            for literal, name, spec, _conversion in string.Formatter().parse(text):
                section.append(re.escape(literal))
                if name is None:
                    continue
                count = seen[name] = seen.get(name, 0) + 1
                self._specs.append((name, spec))
                group = name if count == 1 else f"{name}__{count}"
                if spec and "%" in spec:
                    body = re.sub("|".join(map(re.escape, _DIRECTIVES)), lambda m: _DIRECTIVES[m.group(0)], re.escape(spec))
                elif spec and _INT_SPEC.fullmatch(spec):
                    body = rf"\d{{{_INT_SPEC.fullmatch(spec).group(1)}}}"
                elif name in fields:
                    body = fields[name]
                else:
                    raise ValueError(f"file pattern field {name!r} needs a regex, an integer or a strftime spec")
                section.append(f"(?P<{group}>{body})")
            parts.append(f"(?:{''.join(section)})?" if optional else "".join(section))
        self.regex = re.compile("".join(parts))

    def fullmatch(self, name: str) -> re.Match | None:
        """The regex match of a whole name (what listing parsers filter by)."""
        return self.regex.fullmatch(name)

    def parse(self, name: str) -> dict[str, Any] | None:
        """The fields of `name`, or None when it does not fit (an impossible date included)."""
        match = self.regex.fullmatch(name)
        if match is None:
            return None
        texts: dict[str, list[tuple[str, str | None]]] = {}
        seen: dict[str, int] = {}
        for field, spec in self._specs:
            count = seen[field] = seen.get(field, 0) + 1
            texts.setdefault(field, []).append((spec, match[field if count == 1 else f"{field}__{count}"]))
        values = {}
        for field, pieces in texts.items():
            spec, text = pieces[0]
            if any(t is None for _, t in pieces):
                values[field] = None  # in an optional part that is absent
            elif spec and "%" in spec:
                try:
                    values[field] = datetime.strptime("".join(t for _, t in pieces), "".join(s for s, _ in pieces))
                except ValueError:
                    return None
            elif len({t for _, t in pieces}) > 1:
                return None  # a field repeated with different values
            else:
                values[field] = int(text) if spec and _INT_SPEC.fullmatch(spec) else text
        return values

    def compose(self, **values: Any) -> str:
        return "".join(
            text.format(**values) for text, optional in self._sections
            if not (optional and any(values.get(name) is None for _, name, _, _ in string.Formatter().parse(text) if name))
        )


def _sections(template: str) -> list[tuple[str, bool]]:
    """`a[b]c` -> [("a", False), ("b", True), ("c", False)]."""
    pieces = re.split(r"\[([^\[\]]*)\]", template)
    return [(text, i % 2 == 1) for i, text in enumerate(pieces)]


class Source(Protocol):
    """The interface of `nrt.sources.{imerg,dpr,geosfp,dem}`; listed servers (imerg, dpr) also offer
    `list_url(s, t)`, `parse_listing(s, text, url)` and `select(s, t, expected, listed)`. `s` is the module's
    `Settings`: the values its functions use, made from the config once (the ingest's edge)."""

    NAME: str
    FILE_PATTERN: FilePattern | re.Pattern

    def settings(self, cfg) -> Any: ...

    def parse_name(self, name: str) -> RemoteFile | None: ...

    def expected_files(self, s, t: datetime) -> list[RemoteFile]: ...

    def remote_url(self, s, rf: RemoteFile) -> str: ...

    def validate_settings(self, s) -> Mapping[str, Any]:
        """The keyword arguments `validate` checks a file against."""

    def validate(self, path: str | Path, name: str | None = None, **settings: Any) -> None: ...

    def identify(self, path: str | Path) -> dict: ...

