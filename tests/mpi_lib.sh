# Sourced by the tests/e2e_mpi*.sh scripts: skip (exit 77, not a pass) where Open
# MPI is not installed (`make deps` installs it), find the MPI build (this build
# folder when it is one, else BUILD-mpi, or MPI_BUILD), and let mpirun run as
# root; mpi_run LIMIT ARGS... runs mpirun oversubscribed within LIMIT seconds.
BUILD=${BUILD:-build}
if ! command -v mpicc >/dev/null 2>&1 || ! command -v mpirun >/dev/null 2>&1; then
    echo "skip: Open MPI is not installed (no mpicc or mpirun); make deps installs it"
    exit 77
fi
if [ -z "${MPI_BUILD:-}" ]; then
    MPI_BUILD=$BUILD-mpi
    grep -q '^mpicc ' "$BUILD/.config" 2>/dev/null && MPI_BUILD=$BUILD
fi
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
mpi_run() {
    local limit=$1
    shift
    timeout "$limit" mpirun --oversubscribe --bind-to none "$@"
}
