"""``benchmarks/structure.py`` counts what it should: run on a tiny package written here with one module over 300 lines,
one function over 60 lines, one import cycle, one deferred import and three probes on the package's own objects
(beside calls that look alike but are not probes), so a broken scan cannot silently report 0."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "structure.py"

A = '''from pkg.b import helper


class A:
    kind = "a"

    def __init__(self):
        self.size = 1

    def run(self):
        return helper(self)


class Broken(ValueError):
    pass


def long_function():
    x = 0
''' + "    x += 1\n" * 60 + "    return x\n"

B = '''from pkg.a import A, Broken


def helper(x):
    from pkg.c import C

    if getattr(x, "size", 0):
        pass
    if hasattr(x, "run"):
        pass
    if isinstance(x, (int, A)):
        pass
    getattr(x, "colour", None)
    hasattr(x, "__len__")
    isinstance(x, int)
    isinstance(x, Broken)
    return C
'''

C = "class C:\n    pass\n" + "".join(f"X{i} = {i}\n" for i in range(310))


def test_structure_counts_a_synthetic_package(tmp_path):
    package = tmp_path / "pkg"
    package.mkdir()
    for name, text in {"__init__": "", "a": A, "b": B, "c": C}.items():
        (package / f"{name}.py").write_text(text)
    out = subprocess.run([sys.executable, str(SCRIPT), "--root", str(package)], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    text = out.stdout

    def count(heading: str) -> int:
        return int(re.search(rf"^{re.escape(heading)}.*?: (\d+)$", text, re.M).group(1))

    assert "modules: 4; over 300 lines: 1" in text and re.search(r"^\s+312\s+pkg\.c$", text, re.M)
    assert count("functions over 60 lines") == 1 and re.search(r"^\s+63\s+pkg\.a\.long_function$", text, re.M)
    assert count("import cycles (module level)") == 1 and "  pkg.a -> pkg.b\n" in text
    assert count("project imports deferred into function bodies") == 1 and "  pkg.b.helper: pkg.c\n" in text
    assert count("probes on own objects") == 3
    sites = re.findall(r"^  (pkg\.\S+):(\d+): (.+)$", text, re.M)
    assert sites == [("pkg.b.helper", "7", "getattr(x, 'size', 0)"), ("pkg.b.helper", "9", "hasattr(x, 'run')"),
                     ("pkg.b.helper", "11", "isinstance(x, (int, A))")]


def test_structure_runs_on_lit_score():
    out = subprocess.run([sys.executable, str(SCRIPT)], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert re.search(r"^probes on own objects .*: \d+$", out.stdout, re.M)
