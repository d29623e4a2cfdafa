"""Every pcattn import in the README's Python examples still works, and every file its "Layout"
section names exists."""
from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def python_blocks():
    return re.findall(r"```python\n(.*?)```", README, flags=re.S)


def test_every_pcattn_import_of_the_readme_runs():
    imports = [line.split("#")[0].strip() for block in python_blocks() for line in block.splitlines()
               if re.match(r"\s*(from pcattn[\w.]* import |import pcattn)", line)]
    assert len(imports) >= 5  # the layers, the PyG drop-in, the models, the engine, viz
    done = subprocess.run([sys.executable, "-W", "error::FutureWarning", "-c", "\n".join(imports)],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, f"{imports}\n{done.stderr[-2000:]}"


def test_the_layout_section_matches_the_code():
    """Each ``pcattn/<wing>/`` entry names every module of that folder, and only modules that exist; each
    module directly in ``pcattn/`` has an entry."""
    layout = README.split("## Layout", 1)[1].split("```", 2)[1]
    entries, folder = {}, ""
    for line in layout.splitlines():
        if line and not line.startswith(" "):  # a new entry; indented lines continue the one above
            folder, line = line.split(None, 1) if " " in line else (line, "")
        entries[folder] = entries.get(folder, "") + " " + line
    for folder, text in entries.items():
        if not folder.startswith("pcattn/") or not folder.endswith("/"):
            continue
        modules = {path.stem for path in (ROOT / folder).glob("*.py")} - {"__init__", "__main__"}
        for name in re.findall(r"\b(\w+)\.py\b", text):
            assert name in modules, f"the README's layout names {folder}{name}.py, which does not exist"
        unnamed = sorted(name for name in modules if not re.search(rf"\b{name}\b", text))
        assert not unnamed, f"the README's layout does not name {folder}: {unnamed}"
    top = {f"pcattn/{path.name}" for path in ROOT.glob("pcattn/*.py")} - {"pcattn/__init__.py", "pcattn/__main__.py"}
    assert top <= set(entries), f"no layout entry for {sorted(top - set(entries))}"
    assert {"pcattn/nn/", "pcattn/models/", "pcattn/engine/", "pcattn/viz/"} <= set(entries)
