"""Write config/default.toml from the built-in defaults in nrt/config.py, with the code's comments.

Run after adding a config field: `python scripts/write_default_config.py`. tests/test_config.py fails
while the file and the code disagree. (Hand-written TOML emitter: tomllib reads only, and the file
should carry comments and unset keys, which generic writers drop.)
"""

from __future__ import annotations

import inspect
import json
import re
import sys
from pathlib import Path

from pydantic import BaseModel

from nrt import config

OUT = Path(__file__).resolve().parents[1] / "config" / "default.toml"
HEADER = """\
# nrt default configuration: the embedded offline setup.
#
# Sources are the synthetic twin served on 127.0.0.1:8765 (`nrt twin serve`), the catalog is SQLite
# under the work directory, and the model runs on the CPU (device "auto" picks a GPU when present).
# These values equal the built-in defaults (a test keeps them equal), so `nrt` without `--config`
# behaves exactly like `nrt --config config/default.toml`. Copy this file to change a value.
# Secrets never go here: NRT_DB_URL, NRT_PPS_EMAIL, NRT_EARTHDATA_TOKEN (or _USERNAME/_PASSWORD,
# or ~/.netrc), or systemd credentials in $CREDENTIALS_DIRECTORY.
"""
# Values the code expands at load time; the file keeps the portable spelling.
RAW = {("general", "workdir"): "~/.local/share/nrt"}
# Lists of tables empty by default, with a commented example (`key = []` clashes with a later [[table]] of that key).
EXAMPLES = {("products",): {"basins": [
    "[[products.basins]]", 'name = "raccoon"', "polygon = [[-94.9, 41.6], [-93.6, 41.5], [-93.5, 42.2], [-94.6, 42.4]]",
    "[[products.basins]]", 'name = "cedar"', 'geojson = "basins/cedar.geojson"  # relative to this file',
]}}


def field_comments(model: type[BaseModel]) -> dict[str, str]:
    comments = {}
    for line in inspect.getsource(model).splitlines():
        match = re.match(r"\s+(\w+):.*?#\s*(.+)$", line)
        if match:
            comments[match.group(1)] = match.group(2)
    return comments


def scalar(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, list):
        return "[" + ", ".join(scalar(v) for v in value) + "]"
    return repr(value)


def table(model: BaseModel, path: tuple[str, ...], lines: list[str], header: str) -> None:
    comments = field_comments(type(model))
    own, nested = [], []
    for name, info in type(model).model_fields.items():
        if info.exclude:
            continue
        value = getattr(model, name)
        if isinstance(value, BaseModel) or (isinstance(value, list) and value and isinstance(value[0], BaseModel)):
            nested.append((name, value))
        elif value is None:
            own.append(f"# {name} = ...  (unset{'; ' + comments[name] if name in comments else ''})")
        else:
            raw = RAW.get((*path, name))
            dumped = raw if raw is not None else model.model_dump(mode="json", include={name})[name]
            own.append(f"{name} = {scalar(dumped)}" + (f"  # {comments[name]}" if name in comments else ""))
            if name in EXAMPLES.get(path, {}):
                own.append(f"# replace `{name} = []` by tables such as:")
                own.extend(f"# {line}" for line in EXAMPLES[path][name])
    if own:  # a table holding only sub-tables needs no header of its own
        lines.extend(["", header, *own])
    for name, value in nested:
        dotted = ".".join((*path, name))
        for item in value if isinstance(value, list) else [value]:
            table(item, (*path, name), lines, f"[[{dotted}]]" if isinstance(value, list) else f"[{dotted}]")


def render() -> str:
    lines: list[str] = []
    table(config.Config(), (), lines, "")
    return HEADER + "\n".join(lines) + "\n"


if __name__ == "__main__":
    OUT.write_text(render())
    print(f"wrote {OUT}", file=sys.stderr)
