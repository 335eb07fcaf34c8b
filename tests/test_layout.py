"""The package's shape: one folder per rule file, no rule module importing another, no import cycle, and every
path under results/<s>/ named in pipeline/core/layout.py only."""

from __future__ import annotations

import ast
from pathlib import Path

from conftest import REPO

PKG = REPO / "pipeline"


def _modules() -> dict[str, Path]:
    out = {}
    for p in sorted(PKG.rglob("*.py")):
        parts = p.relative_to(REPO).with_suffix("").parts
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = p
    return out


def _imports(module: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """pipeline modules imported anywhere in ``path`` (top level or inside functions; relative ones resolved)."""
    package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(parts + ([base] if base else []))
            found.add(base)
            found.update(f"{base}.{a.name}" for a in node.names)
    return {m for m in found if m in modules}


def _rule_modules(modules: dict[str, Path]) -> set[str]:
    """Modules with a CLI that a rule runs (``if __name__ == "__main__"``), not the ``__main__`` wrappers."""
    return {m for m, p in modules.items() if not m.endswith("__main__") and '__name__ == "__main__"' in p.read_text()}


def test_one_folder_per_rule_file():
    rule_files = {p.stem for p in (REPO / "workflow" / "rules").glob("*.smk")} - {"common"}
    folders = {p.name for p in PKG.iterdir() if p.is_dir() and (p / "__init__.py").is_file()} - {"core"}
    assert rule_files == folders
    assert not [p.name for p in PKG.glob("*.py") if p.name != "__init__.py"], "modules belong in a stage folder"


def test_no_rule_module_imports_another():
    modules = _modules()
    rules = _rule_modules(modules)
    assert {"pipeline.preprocess.crop", "pipeline.stage2.train", "pipeline.render.video"} <= rules
    sideways = {(m, i) for m in rules for i in _imports(m, modules[m], modules) & rules if i != m}
    assert not sideways


def test_no_import_cycle():
    modules = _modules()
    graph = {m: _imports(m, p, modules) - {m} for m, p in modules.items()}
    # a package imports its own __init__ implicitly: leave those edges out, keep everything else
    graph = {m: {i for i in deps if not m.startswith(i + ".")} for m, deps in graph.items()}
    state: dict[str, int] = {}

    def visit(m: str, stack: list[str]) -> None:
        state[m] = 1
        for d in graph[m]:
            assert state.get(d) != 1, f"import cycle: {' -> '.join(stack[stack.index(d):] + [d]) if d in stack else d}"
            if d not in state:
                visit(d, stack + [d])
        state[m] = 2

    for m in graph:
        if m not in state:
            visit(m, [m])


def test_subject_paths_are_named_in_the_layout_only():
    from pipeline.core.layout import RELATIVE, SELF_AUDIO

    s = RELATIVE
    named = {str(p) for p in (
        s.ingest.video, s.ingest.audio, s.ingest.meta, s.crop.video, s.crop.boxes, s.crop.meta, s.landmarks.table,
        s.tracking.tracks, s.tracking.canonical, s.tracking.transforms, s.parsing.labels, s.parsing.torso,
        s.parsing.background, s.aus.table, s.aus.stats, s.audio.features(SELF_AUDIO), s.stage1.model, s.stage1.pred(),
        s.stage2.frames, s.stage2.head, s.stage2.head_meta, s.stage2.checkpoint, s.torso.model, s.eval.metrics,
        s.export.ernerf_stats, s.video)}
    hits = []
    for path in [*PKG.rglob("*.py"), *(REPO / "workflow").rglob("*.smk"), *(REPO / "bench").glob("*.py")]:
        if path.name == "layout.py":
            continue
        tree = ast.parse(path.read_text()) if path.suffix == ".py" else None
        strings = ([n.value for n in ast.walk(tree) if isinstance(n, ast.Constant) and isinstance(n.value, str)]
                   if tree else path.read_text().split('"'))
        hits += [f"{path.relative_to(REPO)}: {v}" for v in strings if any(v.endswith(n) for n in named)]
    assert not hits
