# Source on the GPU machine: puts gsplat 1.5.3 with its CUDA code already compiled on PYTHONPATH.
#
#   source bench/gpu_gsplat_env.sh            # from anywhere; sets PYTHONPATH (repo + gsplat), GSPLAT_STATUS
#
# The GPU machine has no network and no pip index, and gsplat from PyPI compiles its CUDA code the first time it
# is imported (77 s on an H200). So:
# * /tmp/gsplat_pkg already holds the compiled package (an earlier source in this machine's life): use it;
# * .carry/gsplat_sm90.tar.xz there (a package built by an earlier call): unpack it to /tmp/gsplat_pkg, done;
# * otherwise install the wheels of .carry/wheels (gsplat 1.5.3 and its pure-Python dependencies, fetched on the
#   CPU machine with `pip download`) into /tmp/gsplat_pkg, compile gsplat's CUDA sources once for
#   TORCH_CUDA_ARCH_LIST (default 9.0) as the module `gsplat.csrc` (the import gsplat tries before its own JIT
#   build, so later imports compile nothing), and pack the result as $OUT/gsplat_sm90.tar.xz: copy it to .carry/
#   on the CPU machine and carry it next time.
# Flags are gsplat's own (_backend.py): -O3, --use_fast_math, its include and glm directories.
_gs_dest=/tmp/gsplat_pkg
_gs_repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
if compgen -G "$_gs_dest/gsplat/csrc*.so" > /dev/null; then
    GSPLAT_STATUS="already in $_gs_dest"
elif [[ -f $_gs_repo/.carry/gsplat_sm90.tar.xz ]]; then
    mkdir -p "$_gs_dest" && tar -xJf "$_gs_repo/.carry/gsplat_sm90.tar.xz" -C "$_gs_dest" \
        || { echo "gsplat: unpacking .carry/gsplat_sm90.tar.xz failed" >&2; return 1; }
    GSPLAT_STATUS="prebuilt (.carry/gsplat_sm90.tar.xz)"
else
    _gs_t0=$(date +%s)
    # one pip call: a second --target install into the same folder skips (with a warning) what is already there
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --find-links "$_gs_repo/.carry/wheels" \
        --target "$_gs_dest" gsplat==1.5.3 jaxtyping wadler_lindig rich markdown-it-py mdurl pygments \
        || { echo "gsplat: pip install from .carry/wheels failed" >&2; return 1; }
    TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0} MAX_JOBS=${MAX_JOBS:-16} python3 - "$_gs_dest" <<'PY' \
        || { echo "gsplat: compiling the CUDA sources failed" >&2; return 1; }
import glob, os, shutil, sys, tempfile
from torch.utils.cpp_extension import load
pkg = os.path.join(sys.argv[1], "gsplat")
cuda = os.path.join(pkg, "cuda")
sources = sorted(glob.glob(os.path.join(cuda, "csrc", "*.cu")) + glob.glob(os.path.join(cuda, "csrc", "*.cpp"))
                 + [os.path.join(cuda, "ext.cpp")])
build = tempfile.mkdtemp(prefix="gsplat_build_")
load(name="csrc", sources=sources, extra_cflags=["-O3", "-Wno-attributes"], extra_cuda_cflags=["-O3", "-use_fast_math"],
     extra_include_paths=[os.path.join(cuda, "include"), os.path.join(cuda, "csrc", "third_party", "glm")],
     build_directory=build, verbose=False)
so = [f for f in os.listdir(build) if f.startswith("csrc") and f.endswith(".so")]
shutil.copyfile(os.path.join(build, so[0]), os.path.join(pkg, so[0]))
print(f"gsplat: compiled {len(sources)} sources into {os.path.join(pkg, so[0])}")
PY
    GSPLAT_STATUS="built here in $(( $(date +%s) - _gs_t0 )) s"
    if [[ -n ${OUT:-} ]]; then
        tar -I "xz -T0" --exclude=third_party -cf "$OUT/gsplat_sm90.tar.xz" -C "$_gs_dest" . \
            && GSPLAT_STATUS="$GSPLAT_STATUS, packed to \$OUT"
    fi
fi
export PYTHONPATH="$_gs_repo:$_gs_dest${PYTHONPATH:+:$PYTHONPATH}"
echo "gsplat: $GSPLAT_STATUS"
