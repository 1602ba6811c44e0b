"""The folder tree is the process graph: each package of rtcore imports only the layers below it
(rtcore/__init__.py draws them), so a stage never reaches into another stage's internals. Every
import statement counts, at module level or inside a function, TYPE_CHECKING ones included."""

from __future__ import annotations

import ast

from tests.conftest import REPO

# What each top-level part of rtcore may import besides itself.
STAGES = {"media", "vad", "asr", "dialog"}
ALLOWED: dict[str, set[str]] = {
    "runtime": set(),
    "intents": set(),
    "media": {"runtime"},
    "vad": {"runtime"},
    "asr": {"runtime", "intents"},
    "dialog": {"runtime", "intents"},
    "sim": {"runtime", "intents", *STAGES},
    "observe": {"runtime"},
    "launch": {"runtime", "intents", *STAGES, "sim", "observe"},
    "cli": {"runtime", "intents", *STAGES, "sim", "launch", "observe"},
    "__init__": set(),
}
OUTSIDE = ("procs", "bench", "tests")  # the library never imports the process wiring, benchmarks or tests


def part_of(module: str) -> str | None:
    """"rtcore.dialog.ari.client" -> "dialog"; "rtcore" -> "__init__"; not rtcore's: None."""
    names = module.split(".")
    if names[0] != "rtcore":
        return None
    return names[1] if len(names) > 1 else "__init__"


def imports_of(source: str, module: str) -> list[tuple[int, str]]:
    """Every module an import statement of `module`'s source names (relative imports resolved)."""
    found = []
    package = module.rsplit(".", 1)[0]
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*parent, base] if base else parent)
            found.append((node.lineno, base))
            # `from rtcore import dialog` imports the package rtcore.dialog
            if base == "rtcore":
                found += [(node.lineno, f"rtcore.{alias.name}") for alias in node.names]
    return found


def violations(files: dict[str, str]) -> list[str]:
    """`files`: module name -> source. Returns one line per import against the direction."""
    wrong = []
    for module, source in sorted(files.items()):
        here = part_of(module)
        assert here is not None, module
        for line, target in imports_of(source, module):
            there = part_of(target)
            top = target.split(".")[0]
            if there is None:
                if top in OUTSIDE:
                    wrong.append(f"{module}:{line} imports {target} (rtcore never imports {top}/)")
                continue
            if there != here and there != "__init__" and there not in ALLOWED[here]:
                wrong.append(f"{module}:{line} imports {target}: {here} may import "
                             f"{', '.join(sorted(ALLOWED[here])) or 'nothing of rtcore'}")
    return wrong


def rtcore_sources() -> dict[str, str]:
    files = {}
    for path in sorted((REPO / "rtcore").rglob("*.py")):
        parts = path.relative_to(REPO).with_suffix("").parts
        module = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        files[module] = path.read_text(encoding="utf-8")
    return files


def test_every_import_of_rtcore_points_down_the_layers() -> None:
    files = rtcore_sources()
    assert {part_of(m) for m in files} == set(ALLOWED), "a package of rtcore is missing from ALLOWED"
    assert violations(files) == []


def test_an_import_against_the_direction_is_reported() -> None:
    """The check itself: a media module reaching into the dialog, a stage importing the process
    wiring, a relative import climbing into another stage, and a function-level import are caught."""
    files = {
        "rtcore.media.capture": "import numpy\nfrom rtcore.runtime.ring import AudioRings\n"
                                "def f():\n    from rtcore.dialog.calls import CallController\n",
        "rtcore.vad.detector": "from ..asr import whisper\nfrom . import segmenter\n",
        "rtcore.asr.worker": "import procs.asr_worker\nfrom rtcore.intents import base\n",
        "rtcore.runtime.bus": "from rtcore import dialog\n",
    }
    assert violations(files) == [
        "rtcore.asr.worker:1 imports procs.asr_worker (rtcore never imports procs/)",
        "rtcore.media.capture:4 imports rtcore.dialog.calls: media may import runtime",
        "rtcore.runtime.bus:1 imports rtcore.dialog: runtime may import nothing of rtcore",
        "rtcore.vad.detector:1 imports rtcore.asr: vad may import runtime",
    ]
