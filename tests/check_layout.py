"""The source tree's layout rules (docs/design.md, "Layout"), checked on every test run:

- every library file sits in a subsystem folder of src/ and include/pare/;
- an include goes only to the file's own subsystem or to a lower layer;
- no file in src/ is over 400 lines;
- no function in src/ is over 60 lines, from its signature to its closing brace (FUNCTION_ALLOWLIST names
  the exceptions, each with its reason).

usage: check_layout.py SOURCE_DIR
"""

import pathlib
import re
import sys

LAYERS = {"core": 0, "prune": 1, "quantize": 1, "distill": 1, "cache": 1, "pool": 1,
          "convert": 2, "serve": 2, "compress": 2, "tools": 3}
TOP_LEVEL_HEADERS = {"pare.hpp"}  # the umbrella header; version.hpp is generated into the build tree
INCLUDE = re.compile(r'^\s*#\s*include\s*[<"]([^>"]+)[>"]', re.M)
MAX_LINES = 400
MAX_FUNCTION_LINES = 60
# (file relative to the source tree, function name) -> why it may be longer. An entry that no longer
# matches a long function is reported too, so the list cannot go stale.
FUNCTION_ALLOWLIST: dict = {}
BLANK = re.compile(r"[^\n]")
CODE_TOKENS = re.compile(r'//[^\n]*|/\*.*?\*/|R"([^(\s]*)\(.*?\)\1"|"(?:\\.|[^"\\\n])*"|'
                         r"(?<![\w'])'(?:\\.|[^'\\\n])+'|^[ \t]*#(?:\\\n|[^\n])*", re.S | re.M)
SCOPE = re.compile(r"^\s*(template\s*<.*>\s*)?(namespace|class|struct|union|enum|extern)\b", re.S)


def subsystem_of(path: pathlib.Path, root: pathlib.Path) -> str:
    return path.relative_to(root).parts[0]


def included_subsystem(target: str):
    parts = target.split("/")
    if parts[0] == "pare" and len(parts) == 3:
        return parts[1]
    if len(parts) == 2 and parts[0] in LAYERS:
        return parts[0]
    return None


def code_only(text: str) -> str:
    """The text with comments, string and character literals and preprocessor lines blanked (line breaks
    kept), so that every brace left is one of the code's."""
    return CODE_TOKENS.sub(lambda m: BLANK.sub(" ", m.group(0)), text)


def closing_brace(code: str, opening: int) -> int:
    depth = 0
    for i in range(opening, len(code)):
        if code[i] == "{":
            depth += 1
        elif code[i] == "}":
            depth -= 1
            if depth == 0:
                return i
    return len(code) - 1


def functions(text: str):
    """(name, first line, last line) of each function body at namespace or class scope: a brace whose
    declaration has parentheses and is neither a scope (namespace, class, ...) nor an initializer
    (`x = {...}`). Lambdas and local classes count as lines of the function that holds them."""
    code = code_only(text)
    i, start = 0, 0
    while i < len(code):
        if code[i] in ";}":
            start = i + 1
        elif code[i] == "{":
            declaration = code[start:i]
            if SCOPE.match(declaration):  # step inside: its members are at scope level
                start = i + 1
                i += 1
                continue
            end = closing_brace(code, i)
            head = declaration.split("(")[0]
            if "(" in declaration and "=" not in head:
                if code[end + 1:].lstrip()[:1] in (",", "{"):  # a brace of a constructor's initializer list
                    i = end + 1
                    continue
                first = start + len(declaration) - len(declaration.lstrip())
                names = re.findall(r"([~\w:]+)\s*\(", declaration)
                yield names[0] if names else "?", code.count("\n", 0, first) + 1, code.count("\n", 0, end) + 1
            start = i = end + 1
            continue
        i += 1


def long_functions(path: pathlib.Path, relative: str, text: str, allowed: set):
    for name, first, last in functions(text):
        lines = last - first + 1
        if lines <= MAX_FUNCTION_LINES:
            continue
        if (relative, name) in FUNCTION_ALLOWLIST:
            allowed.add((relative, name))
            continue
        yield f"{relative}:{first}: function {name} has {lines} lines, more than {MAX_FUNCTION_LINES}"


def problems(source: pathlib.Path):
    src, include = source / "src", source / "include" / "pare"
    allowed = set()
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
        if root == src:
            yield from long_functions(path, str(path.relative_to(source)), text, allowed)
    for relative, name in sorted(set(FUNCTION_ALLOWLIST) - allowed):
        yield f"{relative}: {name} is in FUNCTION_ALLOWLIST but no longer over {MAX_FUNCTION_LINES} lines"


def main() -> int:
    found = list(problems(pathlib.Path(sys.argv[1])))
    for line in found:
        print(line)
    print(f"layout: {len(found)} problems")
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
