#!/usr/bin/env bash
# Fills .whl/ with what the offline GPU host lacks (bench/README.md, "What .whl/ holds"), so a
# fresh checkout can prepare a GPU call without redoing it by hand:
#
#   bash bench/fetch_wheels.sh base     # liger-kernel, galore-torch, q-galore-torch, gguf
#   bash bench/fetch_wheels.sh gptq     # GPT-QModel 7.6.0 (no compiled kernels) and what it needs
#   bash bench/fetch_wheels.sh aqlm     # aqlm
#
# Run it in a venv that has torch (GPT-QModel's wheel is built against it with
# --no-build-isolation, so no second torch is downloaded). The host's Python is 3.12, so
# binary wheels are asked for that Python and platform.
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p .whl
dl() {  # pure-Python wheels, no dependencies (the host has torch, transformers, peft)
  python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
    --platform manylinux_2_28_x86_64 --platform any -d .whl "$@"
}
for set in "${@:-base}"; do
  case "$set" in
    base) dl liger-kernel galore-torch q-galore-torch gguf ;;
    aqlm) dl aqlm==1.1.7 ;;
    gptq)
      dl "optimum>=2.0"
      # GPT-QModel and four of its small dependencies publish source archives only; `pip
      # download` of GPT-QModel's would build its metadata against a fresh torch (many
      # minutes), so each archive is fetched from the simple index and built here, GPT-QModel
      # with BUILD_CUDA_EXT=0: its torch and Triton kernels only. Versions: what 7.6.0 asks
      # for (device-smi>=0.5.7, logbar>=0.4.14, tokenicer>=0.0.14, defuser>=0.0.28).
      tmp=$(mktemp -d)
      for pkg in gptqmodel:7.6.0 device-smi: logbar: tokenicer: defuser: pypcre:; do
        name=${pkg%%:*} version=${pkg#*:} file=${name//-/_}
        url=$(curl -fsS "https://pypi.org/simple/$name/" | grep -o "https://[^\"#]*/$file-${version:-[0-9][^\"#]*}\.tar\.gz" \
          | awk -F/ '{print $NF, $0}' | sort -V | tail -1 | cut -d' ' -f2)   # newest by file name
        [ -n "$url" ] || { echo "no source archive of $name ${version:-(newest)} on PyPI" >&2; exit 1; }
        curl -fsSL -o "$tmp/$(basename "$url")" "$url"
      done
      for sdist in "$tmp"/device_smi-* "$tmp"/logbar-* "$tmp"/tokenicer-* "$tmp"/defuser-*; do
        python3 -m pip wheel -q --no-deps -w .whl "$sdist"
      done
      BUILD_CUDA_EXT=0 python3 -m pip wheel -q --no-deps --no-build-isolation -w .whl "$tmp"/gptqmodel-*.tar.gz
      # pypcre has no wheel for the host's Python; gpu_session.sh builds it there.
      cp "$tmp"/pypcre-*.tar.gz .whl/
      rm -rf "$tmp"
      ;;
    *) echo "unknown set $set (base | gptq | aqlm)" >&2; exit 2 ;;
  esac
done
ls -la .whl && du -sh .whl
