#!/usr/bin/env bash
# Build shear with candle's `cuda` feature on a machine without a GPU or CUDA toolkit, for an H100/H200
# (sm_90a, driver with CUDA 13.0): nvcc 13.0 and the link-time
# libraries come from PyPI's cuda-toolkit, libcuda is a link-time stub (the real one comes with the driver).
# Takes 10-20 minutes on 2 cores and ~1.3 GB of wheels. Output: target-cuda/release/shear (not in git).
#   W=scratch-dir bash scripts/build-cuda.sh
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
W=${W:-$root/target-cuda/toolchain}
mkdir -p "$W"
if [ ! -x "$W/venv/bin/pip" ]; then
  python3 -m venv "$W/venv"
fi
# nvcc 13.0.x: drivers for CUDA 13.0 reject PTX from newer compilers.
"$W/venv/bin/pip" install -q --disable-pip-version-check \
  "cuda-toolkit[nvcc,crt,nvvm,cccl,cudart,cublas,curand,nvrtc]==13.0.2"
CU=$(echo "$W"/venv/lib/python3*/site-packages/nvidia/cu13)
LINK=$W/cudalink
mkdir -p "$LINK/lib/stubs"
for l in cudart.so.13 cublas.so.13 cublasLt.so.13 curand.so.10 nvrtc.so.13; do
  ln -sf "$CU/lib/lib$l" "$LINK/lib/lib${l%%.so*}.so"
done
cargo fetch --locked -q
CUDARC_DIR=$(cargo metadata --format-version 1 -q --features cuda | python3 -c \
  'import json,sys; print([p["manifest_path"] for p in json.load(sys.stdin)["packages"] if p["name"]=="cudarc"][0].rsplit("/",1)[0])')
grep -oE '^\s+fn (cu[A-Za-z0-9_]+)\(' "$CUDARC_DIR/src/driver/sys/mod.rs" | sed -E 's/^\s+fn //; s/\($//' | sort -u \
  | awk '{print "int "$1"(void){return 100;}"}' > "$LINK/libcuda_stub.c"
gcc -shared -fPIC -o "$LINK/lib/stubs/libcuda.so" -Wl,-soname,libcuda.so.1 "$LINK/libcuda_stub.c"
export PATH="$CU/bin:$PATH"
export CUDA_COMPUTE_CAP=${CUDA_COMPUTE_CAP:-90}
export CUDARC_CUDA_VERSION=13000
export CUDA_HOME="$LINK"
export CUDAFORGE_THREADS=${CUDAFORGE_THREADS:-2}
export CARGO_TARGET_DIR=$root/target-cuda
time cargo build --release --locked --features cuda --bin shear
ls -l "$CARGO_TARGET_DIR/release/shear"
# Without a GPU the binary must still start and fall back to the CPU.
mkdir -p "$W/nodev" && cp "$LINK/lib/stubs/libcuda.so" "$W/nodev/libcuda.so.1"
LD_LIBRARY_PATH="$W/nodev:$CU/lib" "$CARGO_TARGET_DIR/release/shear" --version
