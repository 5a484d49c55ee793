#!/usr/bin/env bash
# Regenerate the R golden reference values in tests/golden/.
#
#   tests/golden/regenerate.sh          (from the repo root, or from anywhere)
#
# 1. installs R + survival/cmprsk/jsonlite from Debian packages if missing,
# 2. exports the lifelines datasets to tests/golden/data/*.csv,
# 3. runs make_golden.R, which writes data/mgus2.csv and golden.json.
set -euo pipefail

GOLDEN_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_ROOT="$(cd "${GOLDEN_DIR}/../.." && pwd)"
PYTHON="${PYTHON:-${REPO_ROOT}/.venv/bin/python}"
DEB_PACKAGES=(r-base-core r-cran-survival r-cran-cmprsk r-cran-jsonlite)

r_ready() {
    command -v Rscript >/dev/null 2>&1 || return 1
    Rscript -e 'for (p in c("survival", "cmprsk", "jsonlite"))
                  if (!requireNamespace(p, quietly = TRUE)) quit(status = 1)' \
        >/dev/null 2>&1
}

if ! r_ready; then
    echo "R or required R packages missing; installing: ${DEB_PACKAGES[*]}" >&2
    SUDO=""
    if [[ "$(id -u)" -ne 0 ]]; then
        SUDO="sudo"
    fi
    ${SUDO} apt-get update
    ${SUDO} apt-get install -y "${DEB_PACKAGES[@]}"
    r_ready || { echo "R setup failed" >&2; exit 1; }
fi

if [[ ! -x "${PYTHON}" ]]; then
    echo "python not found at ${PYTHON} (set PYTHON=... to override)" >&2
    exit 1
fi

"${PYTHON}" "${GOLDEN_DIR}/export_data.py"
Rscript "${GOLDEN_DIR}/make_golden.R"
