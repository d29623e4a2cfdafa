"""``pip install pcattn`` gives torch and PyG only: the package, its layers and its models work without
Open3D, h5py and matplotlib, the kNN then runs in torch, and what needs one of them names the extra."""
from __future__ import annotations

import json
import subprocess
import sys
import textwrap

HIDDEN = ("open3d", "h5py", "matplotlib", "mpl_toolkits")

SCRIPT = textwrap.dedent('''
    import json, sys, tempfile, warnings
    from pathlib import Path

    HIDDEN = {hidden!r}

    class Hide:  # as if they were not installed
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in HIDDEN:
                raise ModuleNotFoundError(f"No module named {{name!r}}")
            return None

    sys.meta_path.insert(0, Hide())

    import numpy as np
    import torch
    import pcattn, pcattn.nn, pcattn.models
    from pcattn.nn import geometry

    torch.manual_seed(0)
    pos = torch.randn(300, 3)                                      # >= 128 points: Open3D's size
    neighbors = pcattn.knn(pos, 8)
    brute = torch.cdist(pos, pos).topk(8, largest=False).indices
    layer = pcattn.VectorSelfAttention(8, 8, k=8)
    model = pcattn.models.create_model("pt-tiny-vector", num_classes=3, widths=(8, 16), depths=(1, 1)).eval()
    with torch.no_grad():
        features = layer(torch.randn(300, 8), pos)
        logits = model(None, torch.randn(2, 64, 3))
    result = {{"open3d_knn": geometry._open3d_core() is not None,
              "knn_exact": bool(torch.equal(neighbors.sort(1).values, brute.sort(1).values)),
              "shapes": [list(features.shape), list(logits.shape)], "messages": {{}}}}

    from pcattn.data.io import read_point_cloud
    from pcattn.data.shapenetpart import read_hdf5_parts
    from pcattn.viz import plot_run, render_views

    folder = Path(tempfile.mkdtemp())
    (folder / "cloud.ply").write_text("ply\\nformat ascii 1.0\\nelement vertex 1\\nproperty float x\\n"
                                      "property float y\\nproperty float z\\nend_header\\n0 0 0\\n")
    (folder / "parts.h5").write_bytes(b"not read")
    (folder / "metrics.jsonl").write_text('{{"epoch": 1, "train_loss": 1.0}}\\n')
    calls = {{"ply": lambda: read_point_cloud(folder / "cloud.ply"),
             "hdf5": lambda: read_hdf5_parts(folder / "parts.h5"),
             "render": lambda: render_views(np.zeros((4, 3)), np.zeros((4, 3))),
             "plots": lambda: plot_run(folder)}}
    for name, call in calls.items():
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # the renderer's "Open3D cannot render" warning
                call()
            result["messages"][name] = None
        except ImportError as error:
            result["messages"][name] = str(error)
    result["imported"] = sorted(name for name in sys.modules if name.split(".")[0] in HIDDEN)
    print("RESULT" + json.dumps(result))
''').format(hidden=HIDDEN)


def test_layers_and_models_work_without_the_optional_packages_and_errors_name_the_extra():
    done = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.split("RESULT", 1)[1])
    assert result["imported"] == []
    assert result["open3d_knn"] is False and result["knn_exact"] is True      # the torch kNN ran, exactly
    assert result["shapes"] == [[300, 8], [2, 3]]
    messages = result["messages"]
    assert "open3d" in messages["ply"] and "pip install 'pcattn[io]'" in messages["ply"]
    assert "h5py" in messages["hdf5"] and "pip install 'pcattn[io]'" in messages["hdf5"]
    assert "matplotlib" in messages["render"] and "pip install 'pcattn[viz]'" in messages["render"]
    assert "matplotlib" in messages["plots"] and "pip install 'pcattn[viz]'" in messages["plots"]
