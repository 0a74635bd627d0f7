#!/usr/bin/env bash
# Builds llama.cpp's CPU benchmark tools once, into a cache folder outside the
# repository, and prints the folder holding the binaries.
#
# The source comes from the npm registry: the package node-llama-cpp ships the
# llama.cpp release it binds as a git bundle (llama/gitRelease.bundle), so the
# build needs no access to GitHub and the version is pinned by one npm version.
#
#   bench/llama_build.sh            build if needed, print the bin folder
#   bench/llama_build.sh --print    print the bin folder only if the build is complete
#
# Environment:
#   GPTOSS_CACHE   cache root (default $HOME/.cache/gptoss)
#   LLAMA_JOBS     parallel build jobs (default 2: the build is long, not urgent)
#   LLAMA_ISA      native (default): -march=native without AMX; avx2: GGML_NATIVE=OFF,
#                  which is ggml's AVX2 + FMA + F16C + BMI2 build with no AVX-512, as
#                  on an AVX2-only machine (its own folder, suffix -avx2)
#
# The build is complete when the stamp file holds the pinned version; anything
# else in the folder (an interrupted build) is removed and built again.
set -euo pipefail

# Pinned: node-llama-cpp 3.22.1 carries llama.cpp tag v0.5.0 (ggml-org/llama.cpp,
# commit de3ff815ea7d).  Changing this builds a new folder.
NLC_VERSION=3.22.1
LLAMA_COMMIT=de3ff815ea7d559ee917f063901b8986f038abc6
# The build configuration, part of the stamp: a change rebuilds.  "noamx": ggml's
# AMX kernels (compiled in by -march=native on CPUs with AMX) are left out, because
# on the Xeon these benchmarks run on, llama-bench dies with SIGSEGV in
# ggml_backend_amx_mul_mat on the first prompt batch of a Q8_0 model (llama-simple,
# which decodes one token at a time, runs).  Every other native flag stays.
BUILD_TAG=$NLC_VERSION+noamx
NO_AMX="-mno-amx-tile -mno-amx-int8 -mno-amx-bf16"
suffix=""
isa_flags=(-DGGML_NATIVE=ON "-DCMAKE_C_FLAGS=$NO_AMX" "-DCMAKE_CXX_FLAGS=$NO_AMX")
case ${LLAMA_ISA:-native} in
    native) ;;
    avx2)
        BUILD_TAG=$NLC_VERSION+avx2
        suffix=-avx2
        isa_flags=(-DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON
                   -DGGML_AVX512=OFF -DGGML_AVX_VNNI=OFF) ;;
    *) echo "llama_build: LLAMA_ISA must be native or avx2, not '$LLAMA_ISA'" >&2; exit 2 ;;
esac
tools=(llama-bench llama-batched-bench llama-simple)

cache=${GPTOSS_CACHE:-$HOME/.cache/gptoss}
case $cache in /*) ;; *) cache=$PWD/$cache ;; esac
dir=$cache/llama.cpp-nlc$NLC_VERSION$suffix
stamp=$dir/.complete
bin=$dir/build/bin

complete() { [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$BUILD_TAG" ]; }

if [ "${1:-}" = "--print" ]; then
    complete || { echo "llama_build: no complete build in $dir" >&2; exit 1; }
    echo "$bin"
    exit 0
fi
if complete; then
    echo "$bin"
    exit 0
fi

for c in npm git cmake tar c++; do
    command -v "$c" >/dev/null 2>&1 ||
        { echo "llama_build: '$c' not found (run 'make deps')" >&2; exit 1; }
done

# Everything the build prints goes to stderr and a log: stdout is the bin folder.
rm -rf "$dir"
mkdir -p "$dir"
log=$dir/build.log
echo "llama_build: building llama.cpp from node-llama-cpp@$NLC_VERSION in $dir (log: $log)" >&2
start=$(date +%s)
# The steps are chained with && because `set -e` does not apply inside a list
# whose status is tested.
{
    cd "$dir" &&
    npm pack "node-llama-cpp@$NLC_VERSION" --silent --loglevel=error &&
    tar xzf "node-llama-cpp-$NLC_VERSION.tgz" package/llama/gitRelease.bundle \
        package/llama/llama.cpp.info.json &&
    cp package/llama/llama.cpp.info.json llama.cpp.info.json &&
    git -c advice.detachedHead=false clone -q package/llama/gitRelease.bundle src &&
    rm -rf package "node-llama-cpp-$NLC_VERSION.tgz" &&
    # The registry never changes a published version; this catches a wrong pin.
    if [ "$(git -C src rev-parse HEAD)" != "$LLAMA_COMMIT" ]; then
        echo "llama_build: node-llama-cpp@$NLC_VERSION holds commit $(git -C src rev-parse HEAD), not $LLAMA_COMMIT"
        false
    fi &&
    # CPU only, tuned for this machine; static so the binaries need no rpath;
    # no network code (HTTPS, downloads) and nothing but the tools below.
    cmake -S src -B build -DCMAKE_BUILD_TYPE=Release "${isa_flags[@]}" \
        -DBUILD_SHARED_LIBS=OFF -DGGML_CUDA=OFF -DGGML_VULKAN=OFF -DGGML_METAL=OFF \
        -DGGML_OPENMP=ON -DGGML_CCACHE=OFF -DLLAMA_OPENSSL=OFF -DLLAMA_BUILD_TESTS=OFF \
        -DLLAMA_BUILD_SERVER=OFF -DLLAMA_BUILD_APP=OFF -DLLAMA_BUILD_UI=OFF \
        -DLLAMA_BUILD_TOOLS=ON -DLLAMA_BUILD_EXAMPLES=ON &&
    cmake --build build --config Release -j "${LLAMA_JOBS:-2}" --target "${tools[@]}"
} >"$log.tmp" 2>&1 || {
    mv "$log.tmp" "$log" 2>/dev/null || true
    echo "llama_build: build failed; last lines of $log:" >&2
    tail -n 20 "$log" >&2
    exit 1
}
mv "$log.tmp" "$log"
for t in "${tools[@]}"; do
    [ -x "$bin/$t" ] || { echo "llama_build: $bin/$t missing after the build" >&2; exit 1; }
done
echo "$LLAMA_COMMIT" >"$dir/commit"
echo "$BUILD_TAG" >"$stamp"
echo "llama_build: done in $(( $(date +%s) - start )) s, $(du -sh "$dir" | cut -f1) in $dir" >&2
echo "$bin"
