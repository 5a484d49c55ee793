"""Export the lifelines example datasets used by the R golden-value script.

Writes ``tests/golden/data/{lung,gbsg2,rossi,waltons}.csv`` exactly as lifelines
returns them: no index column, original column names, missing values as empty
fields.  Run ``tests/golden/regenerate.sh`` rather than calling this directly.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pandas as pd
from lifelines.datasets import load_gbsg2, load_lung, load_rossi, load_waltons

DATA_DIR = Path(__file__).resolve().parent / "data"

LOADERS: dict[str, Callable[[], pd.DataFrame]] = {
    "lung": load_lung,
    "gbsg2": load_gbsg2,
    "rossi": load_rossi,
    "waltons": load_waltons,
}


def export(out_dir: Path = DATA_DIR) -> list[Path]:
    """Write every dataset in ``LOADERS`` to ``out_dir`` and return the paths."""
    out_dir.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    for name, loader in LOADERS.items():
        path = out_dir / f"{name}.csv"
        loader().to_csv(path, index=False, na_rep="", lineterminator="\n")
        written.append(path)
    return written


def main() -> None:
    for path in export():
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
