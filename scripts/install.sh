#!/usr/bin/env bash
# Builds .venv from nothing: the torch/torchvision pair, detectron2 v0.6 from the package index
# (its Python sources, built without the C++ extension; see ../shared/STACK.md), and this package.
# Idempotent: each step is skipped when what it installs is already there.
set -euo pipefail
cd "$(dirname "$0")/.."

VENV=${VENV:-.venv}
PY=${PYTHON:-python3}
TORCH_PIN="torch==2.14.1 torchvision==0.29.1"
D2_SDIST_URL="https://files.pythonhosted.org/packages/60/26/48f5bbb7ee492696a21da23303daeecdfe3942c498a70d34108acf63b2bd/pb1-detectron2-0.6.tar.gz"
D2_SDIST_SHA256="5d2e9e51e523ec72f6a31cca04b0a515492e9514b773a3d134cedc0677170b29"

[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
pip() {
    # the machine's pip configuration names local mirrors; each miss prints a harmless warning
    "$VENV/bin/python" -m pip --disable-pip-version-check -q "$@" 2>&1 \
        | { grep -v "is ignored: it is neither a file nor a directory" || true; }
    return "${PIPESTATUS[0]}"
}
has() { "$VENV/bin/python" -c "import $1" >/dev/null 2>&1; }

if ! "$VENV/bin/python" -c "import torch, torchvision; assert torch.__version__.startswith('2.14.1') and torchvision.__version__.startswith('0.29.1')" >/dev/null 2>&1; then
    echo "install: torch and torchvision ($TORCH_PIN)"
    pip install $TORCH_PIN
fi

if ! has detectron2; then
    echo "install: detectron2 v0.6 (Python sources, no C++ extension)"
    pip install "setuptools<81" wheel
    work=$(mktemp -d)
    trap 'rm -rf "$work"' EXIT
    "$VENV/bin/python" - "$D2_SDIST_URL" "$D2_SDIST_SHA256" "$work/d2.tar.gz" <<'PY'
import hashlib, sys, urllib.request
url, sha, dest = sys.argv[1:]
data = urllib.request.urlopen(url, timeout=300).read()
if hashlib.sha256(data).hexdigest() != sha:
    sys.exit(f"install: {url} does not have the expected sha256 {sha}")
open(dest, "wb").write(data)
PY
    tar xzf "$work/d2.tar.gz" -C "$work"
    src="$work/pb1-detectron2-0.6"
    # No C++ sources ship in this sdist, and black's old pin does not install on Python 3.11.
    sed -i -e 's/ext_modules=get_extensions(),/ext_modules=[],/' -e 's/"black==21.4b2",/"black",/' "$src/setup.py"
    pip install --no-build-isolation "$src"
fi

if ! has resnet_backbones || [ pyproject.toml -nt "$VENV/.resnet_backbones_installed" ]; then
    echo "install: resnet-backbones (editable) and its dependencies"
    pip install --no-build-isolation -e ".[test,deploy]"
    touch "$VENV/.resnet_backbones_installed"
fi
