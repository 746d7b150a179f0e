#!/usr/bin/env bash
# Builds a virtual environment from nothing: the torch/torchvision pair, detectron2 and this package.
#
#   bash scripts/install.sh                       .venv with detectron2 v0.6 from the package index
#                                                 (its Python sources, no C++ extension)
#   VENV=.venv-d2 D2_SRC=SRC bash scripts/install.sh
#                                                 detectron2 built from SRC (a source checkout or a
#                                                 .tar.gz of one, e.g. its main branch) with its C++
#                                                 extension
#
# See ../shared/STACK.md for why each step is done this way. Idempotent: each step is skipped when
# what it installs is already there (for D2_SRC: built from the same source).
set -euo pipefail
cd "$(dirname "$0")/.."

VENV=${VENV:-.venv}
PY=${PYTHON:-python3}
D2_SRC=${D2_SRC:-}
TORCH_PIN="torch==2.14.1 torchvision==0.29.1"
D2_RELEASE="pb1-detectron2==0.6"
D2_RELEASE_SHA256="5d2e9e51e523ec72f6a31cca04b0a515492e9514b773a3d134cedc0677170b29"

[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
pip() {
    # the machine's pip configuration names local mirrors; each miss prints a harmless warning
    "$VENV/bin/python" -m pip --disable-pip-version-check -q "$@" 2>&1 \
        | { grep -v "is ignored: it is neither a file nor a directory" || true; }
    return "${PIPESTATUS[0]}"
}
has() { "$VENV/bin/python" -c "import $1" >/dev/null 2>&1; }
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

if ! "$VENV/bin/python" -c "import torch, torchvision; assert torch.__version__.startswith('2.14.1') and torchvision.__version__.startswith('0.29.1')" >/dev/null 2>&1; then
    echo "install: torch and torchvision ($TORCH_PIN)"
    pip install $TORCH_PIN
fi

install_d2_release() {
    echo "install: detectron2 v0.6 ($D2_RELEASE: Python sources, no C++ extension)"
    pip install "setuptools<81" wheel
    pip download --no-deps --no-binary :all: "$D2_RELEASE" -d "$work"
    sdist=$(ls "$work"/pb1-detectron2-*.tar.gz)
    if ! echo "$D2_RELEASE_SHA256  $sdist" | sha256sum --check --status; then
        echo "install: $(basename "$sdist") does not have the expected sha256 $D2_RELEASE_SHA256" >&2
        exit 1
    fi
    tar xzf "$sdist" -C "$work"
    src="$work/pb1-detectron2-0.6"
    # No C++ sources ship in this sdist, and black's old pin does not install on Python 3.11.
    sed -i -e 's/ext_modules=get_extensions(),/ext_modules=[],/' -e 's/"black==21.4b2",/"black",/' "$src/setup.py"
    pip install --no-build-isolation "$src"
}

# what a detectron2 source is, for the stamp: the tarball's sha256 or the checkout's git commit
source_id() {
    if [ -f "$1" ]; then
        sha256sum "$1" | cut -d' ' -f1
    else
        git -C "$1" rev-parse HEAD 2>/dev/null || realpath "$1"
    fi
}

install_d2_from_source() {
    local src=$1 stamp="$VENV/.detectron2-source" id
    [ -e "$src" ] || { echo "error: D2_SRC=$src does not exist" >&2; exit 2; }
    id="$(source_id "$src")"
    if has "torch, detectron2._C" && [ "$(cat "$stamp" 2>/dev/null)" = "$id" ]; then
        return
    fi
    echo "install: detectron2 from $src, with its C++ extension (about a minute)"
    pip install "setuptools<81" wheel ninja
    if [ -f "$src" ]; then
        tar xzf "$src" -C "$work"
        src=$(dirname "$(ls -d "$work"/*/setup.py | head -n 1)")
    fi
    # an editable install recurses in setuptools' develop under --no-build-isolation; a wheel does not
    MAX_JOBS=${MAX_JOBS:-$(nproc)} pip wheel --no-build-isolation --no-deps -w "$work/wheels" "$src"
    pip uninstall -y detectron2 pb1-detectron2 >/dev/null 2>&1 || true
    pip install "$work"/wheels/detectron2-*.whl
    echo "$id" > "$stamp"
}

if [ -n "$D2_SRC" ]; then
    install_d2_from_source "$D2_SRC"
elif ! has detectron2; then
    install_d2_release
fi

if ! has resnet_backbones || [ pyproject.toml -nt "$VENV/.resnet_backbones_installed" ]; then
    echo "install: resnet-backbones (editable) and its dependencies"
    pip install --no-build-isolation -e ".[test,deploy]"
    touch "$VENV/.resnet_backbones_installed"
fi
