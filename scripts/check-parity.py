#!/usr/bin/env python3
"""Checks that the C++ wrapper and the Python package reach every function of the C API.

The functions are read from the C header at run time (every `vram_monitor_*` declaration
outside comments), so a function added to the library is checked without editing this
script. A function counts as reached:

  - by the C++ wrapper when its name appears in include/vram_monitor.hpp (or a part it includes,
    include/vram_monitor/*.hpp) outside comments and
    string literals (a call, not a mention in a doc comment or an error message);
  - by the Python package when its name appears in python/vram_monitor/*.py as an identifier
    (`lib.vram_monitor_new(...)`) or as a whole string literal (`"vram_monitor_new"`, the key
    of a ctypes prototype), not inside a docstring or a comment.

Exits 1, listing each function missing and where, if any is not reached; 0 otherwise.

  scripts/check-parity.py               check the checkout
  scripts/check-parity.py --self-test   show that the check fails on what it must catch
"""

import argparse
import io
import os
import re
import sys
import tempfile
import tokenize

ROOT = os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
NAME = re.compile(r"\bvram_monitor_[A-Za-z0-9_]+\b")


def strip_c(text):
    """The C or C++ source without its comments and string and character literals.

    Each is replaced by a space, so that tokens on either side stay apart.
    """
    out = []
    i, n = 0, len(text)
    while i < n:
        c = text[i]
        if text.startswith("//", i):
            j = text.find("\n", i)
            i = n if j < 0 else j
            out.append(" ")
        elif text.startswith("/*", i):
            j = text.find("*/", i + 2)
            i = n if j < 0 else j + 2
            out.append(" ")
        elif c in "\"'":
            j = i + 1
            while j < n and text[j] != c:
                j += 2 if text[j] == "\\" else 1
            i = j + 1
            out.append(" ")
        else:
            out.append(c)
            i += 1
    return "".join(out)


def header_functions(header_text):
    """Names of the functions the header declares: `vram_monitor_x(` outside comments."""
    code = strip_c(header_text)
    return sorted(set(re.findall(r"\b(vram_monitor_[A-Za-z0-9_]+)\s*\(", code)))


def cpp_names(hpp_text):
    """`vram_monitor_*` identifiers of the C++ wrapper's code."""
    return set(NAME.findall(strip_c(hpp_text)))


def python_names(source):
    """`vram_monitor_*` identifiers, and string literals that are exactly such a name."""
    names = set()
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type == tokenize.NAME and NAME.fullmatch(tok.string):
            names.add(tok.string)
        elif tok.type == tokenize.STRING:
            # Plain literals only ("x", 'x'): a docstring or message holds more than a name.
            m = re.fullmatch(r"""(['"])(vram_monitor_[A-Za-z0-9_]+)\1""", tok.string)
            if m:
                names.add(m.group(2))
    return names


def read(path):
    with open(path, encoding="utf-8") as f:
        return f.read()


def read_wrapper(hpp):
    """The C++ wrapper's text: the header and the parts it includes ("vram_monitor/...")."""
    text = read(hpp)
    parts = []
    for part in re.findall(r'#include\s+"(vram_monitor/[^"]+)"', text):
        path = os.path.join(os.path.dirname(hpp), part)
        if os.path.exists(path):
            parts.append(read(path))
    return "\n".join([text] + parts)


def check(header, hpp, python_dir, out=sys.stdout):
    """Returns the list of (function, [where missing]) and prints the verdict."""
    functions = header_functions(read(header))
    if not functions:
        print("check-parity: no vram_monitor_* function found in %s" % header, file=out)
        return [("(none)", ["the header"])]
    in_cpp = cpp_names(read_wrapper(hpp))
    in_python = set()
    py_files = sorted(f for f in os.listdir(python_dir) if f.endswith(".py"))
    for name in py_files:
        in_python |= python_names(read(os.path.join(python_dir, name)))
    missing = []
    for fn in functions:
        where = []
        if fn not in in_cpp:
            where.append("the C++ wrapper (%s)" % os.path.relpath(hpp, ROOT))
        if fn not in in_python:
            where.append("the Python package (%s/*.py)" % os.path.relpath(python_dir, ROOT))
        if where:
            missing.append((fn, where))
    if missing:
        print("check-parity: %d of %d C functions are not reached:" % (len(missing), len(functions)), file=out)
        for fn, where in missing:
            print("  %s: not in %s" % (fn, " nor ".join(where)), file=out)
    else:
        print("check-parity: all %d C functions of %s are reached by the C++ wrapper and the Python package"
              % (len(functions), os.path.relpath(header, ROOT)), file=out)
    return missing


def self_test(header, hpp, python_dir):
    """Runs the check on altered copies; returns the number of expectations that failed."""
    failures = 0

    def expect(ok, what):
        nonlocal failures
        print("%s %s" % ("ok  " if ok else "FAIL", what))
        if not ok:
            failures += 1

    sample = (
        "/* vram_monitor_in_a_comment(void) is not declared */\n"
        "// nor vram_monitor_in_a_line_comment(int)\n"
        "const char *vram_monitor_pointer_return(int32_t x);\n"
        "VramMonitorResult vram_monitor_two_lines(struct VramMonitor *m,\n"
        "                                         size_t n);\n"
        "void vram_monitor_no_args(void);\n"
    )
    expect(header_functions(sample) == ["vram_monitor_no_args", "vram_monitor_pointer_return", "vram_monitor_two_lines"],
           "the header parser finds declarations (one spanning lines, a pointer return) and skips comments")
    expect(cpp_names('/* vram_monitor_a() */ f("vram_monitor_b"); // vram_monitor_c\nvram_monitor_d(x);')
           == {"vram_monitor_d"}, "the C++ side counts calls, not comments or string literals")
    expect(python_names('"""Docstring naming vram_monitor_a."""\n# vram_monitor_b\nx = {"vram_monitor_c": 1}\n'
                        'lib.vram_monitor_d()\ny = "see vram_monitor_e"\n') == {"vram_monitor_c", "vram_monitor_d"},
           "the Python side counts identifiers and prototype keys, not docstrings, comments or messages")

    real = header_functions(read(header))
    expect(len(real) >= 20 and "vram_monitor_new" in real and "vram_monitor_free" in real,
           "the real header yields its functions (%d found)" % len(real))

    with tempfile.TemporaryDirectory() as tmp:
        extra = "vram_monitor_parity_self_test_missing"
        altered = os.path.join(tmp, "vram_monitor.h")
        with open(altered, "w", encoding="utf-8") as f:
            f.write(read(header).replace("#endif  /* VRAM_MONITOR_H */",
                                         "VramMonitorResult %s(struct VramMonitor *monitor);\n"
                                         "#endif  /* VRAM_MONITOR_H */" % extra))
        sink = io.StringIO()
        missing = check(altered, hpp, python_dir, out=sink)
        expect([fn for fn, _ in missing] == [extra] and len(missing[0][1]) == 2 and extra in sink.getvalue(),
               "a function added to the header and reached by neither fails, and is named: %s"
               % sink.getvalue().strip().replace("\n", " | "))

        # A name that the wrapper mentions only in a comment is not reached.
        victim = "vram_monitor_stop_http"
        hpp_text = read_wrapper(hpp)
        hidden = os.path.join(tmp, "vram_monitor.hpp")
        with open(hidden, "w", encoding="utf-8") as f:
            f.write(re.sub(r"\b%s\s*\(" % victim, "/* %s */ other_function(" % victim, hpp_text))
        sink = io.StringIO()
        missing = check(header, hidden, python_dir, out=sink)
        expect([fn for fn, _ in missing] == [victim] and "C++" in missing[0][1][0],
               "a function the wrapper only names in a comment fails on the C++ side: %s"
               % sink.getvalue().strip().replace("\n", " | "))

        # A prototype removed from the Python package.
        pydir = os.path.join(tmp, "python")
        os.mkdir(pydir)
        victim = "vram_monitor_set_pacing"
        for name in os.listdir(python_dir):
            if name.endswith(".py"):
                text = read(os.path.join(python_dir, name))
                text = text.replace('"%s"' % victim, '"renamed"').replace(".%s(" % victim, ".renamed(")
                with open(os.path.join(pydir, name), "w", encoding="utf-8") as f:
                    f.write(text)
        sink = io.StringIO()
        missing = check(header, hpp, pydir, out=sink)
        expect([fn for fn, _ in missing] == [victim] and "Python" in missing[0][1][0],
               "a function the Python package lost fails on the Python side: %s"
               % sink.getvalue().strip().replace("\n", " | "))
    print("check-parity self-test: %d failed" % failures)
    return failures


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--header", default=os.path.join(ROOT, "include", "vram_monitor.h"))
    parser.add_argument("--cpp", default=os.path.join(ROOT, "include", "vram_monitor.hpp"))
    parser.add_argument("--python-dir", default=os.path.join(ROOT, "python", "vram_monitor"))
    parser.add_argument("--self-test", action="store_true", help="check that the check fails where it must")
    args = parser.parse_args()
    if args.self_test:
        return 1 if self_test(args.header, args.cpp, args.python_dir) else 0
    return 1 if check(args.header, args.cpp, args.python_dir) else 0


if __name__ == "__main__":
    sys.exit(main())
