"""The source tree's layout rules (docs/design.md, "Layout"), checked on every test run:

- every library file sits in a subsystem folder of src/ and include/pare/;
- an include goes only to the file's own subsystem or to a lower layer;
- no file in src/ is over 400 lines.

usage: check_layout.py SOURCE_DIR
"""

import pathlib
import re
import sys

LAYERS = {"core": 0, "prune": 1, "quantize": 1, "distill": 1, "cache": 1, "pool": 1,
          "convert": 2, "serve": 2, "tools": 3}
TOP_LEVEL_HEADERS = {"pare.hpp"}  # the umbrella header; version.hpp is generated into the build tree
INCLUDE = re.compile(r'^\s*#\s*include\s*[<"]([^>"]+)[>"]', re.M)
MAX_LINES = 400


def subsystem_of(path: pathlib.Path, root: pathlib.Path) -> str:
    return path.relative_to(root).parts[0]


def included_subsystem(target: str):
    parts = target.split("/")
    if parts[0] == "pare" and len(parts) == 3:
        return parts[1]
    if len(parts) == 2 and parts[0] in LAYERS:
        return parts[0]
    return None


def problems(source: pathlib.Path):
    src, include = source / "src", source / "include" / "pare"
    files = [p for p in src.rglob("*") if p.is_file()] + [p for p in include.rglob("*") if p.is_file()]
    for path in files:
        root = src if path.is_relative_to(src) else include
        relative = path.relative_to(root)
        if len(relative.parts) == 1:
            if root == include and relative.name in TOP_LEVEL_HEADERS:
                continue
            yield f"{path.relative_to(source)}: outside every subsystem folder"
            continue
        own = relative.parts[0]
        if own not in LAYERS:
            yield f"{path.relative_to(source)}: {own}/ is not a subsystem ({', '.join(LAYERS)})"
            continue
        text = path.read_text()
        for target in INCLUDE.findall(text):
            other = included_subsystem(target)
            if other is not None and other != own and LAYERS.get(other, 99) >= LAYERS[own]:
                yield f"{path.relative_to(source)}: includes {target}, a layer not below {own}"
        if root == src and text.count("\n") > MAX_LINES:
            yield f"{path.relative_to(source)}: {text.count(chr(10))} lines, more than {MAX_LINES}"


def main() -> int:
    found = list(problems(pathlib.Path(sys.argv[1])))
    for line in found:
        print(line)
    print(f"layout: {len(found)} problems")
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
