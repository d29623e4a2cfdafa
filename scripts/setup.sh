#!/usr/bin/env bash
# Sets up pcattn on a fresh machine: system libraries for Open3D, a virtual
# environment in .venv with the CPU build of PyTorch, and pcattn itself (editable, with every extra:
# Open3D, h5py, matplotlib, export, and the test tools).
set -euo pipefail
cd "$(dirname "$0")/.."

# Open3D needs libusb to import and software Vulkan (mesa) to render without a display.
need=()
for pkg in libusb-1.0-0 mesa-vulkan-drivers libegl1 libgl1; do
    dpkg -s "$pkg" >/dev/null 2>&1 || need+=("$pkg")
done
if [ ${#need[@]} -gt 0 ]; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        echo "[setup] installing system packages: ${need[*]}"
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
    else
        echo "[setup] WARNING: missing system packages: ${need[*]}" >&2
        echo "[setup] install them with: sudo apt-get install ${need[*]}" >&2
        echo "[setup] (the attention layers work without them; Open3D rendering and file reading do not)" >&2
    fi
fi

PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    echo "[setup] creating .venv"
    "$PY" -m venv .venv
fi
. .venv/bin/activate
python -m pip install -q --upgrade pip >/dev/null 2>&1 || true
# Pin the CPU build first: an unpinned torch may pull a multi-GB CUDA build.
python -c "import torch" >/dev/null 2>&1 || python -m pip install -q "torch==${PCATTN_TORCH_VERSION:-2.13.0}"
python -m pip install -q -e ".[all,dev]"
echo "[setup] done: $(python -c 'import torch, pcattn; print("torch", torch.__version__, "pcattn", pcattn.__version__)')"
