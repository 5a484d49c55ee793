"""Write three demo sites (CSV tables + site.toml) from the bundled real datasets.

Rows of GBSG2 and mgus2 are dealt to the sites with a fixed seed, so the demo
is reproducible and the pooled answer equals the single-table answer.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[2]
DATA = ROOT / "tests" / "golden" / "data"
SITES = {"athens": "GR", "oslo": "NO", "munich": "DE"}
DAYS_PER_MONTH = 30.4375


def main(out: Path) -> None:
    gbsg2 = pd.read_csv(DATA / "gbsg2.csv")
    mgus2 = pd.read_csv(DATA / "mgus2.csv")
    mgus2["etime_days"] = np.round(mgus2["etime"] * DAYS_PER_MONTH).astype(int)
    rng = np.random.default_rng(2026)
    owner_a = rng.integers(0, len(SITES), len(gbsg2))
    owner_c = rng.integers(0, len(SITES), len(mgus2))
    for i, (name, country) in enumerate(SITES.items()):
        site = out / name
        site.mkdir(parents=True, exist_ok=True)
        gbsg2[owner_a == i].to_csv(site / "analysis.csv", index=False)
        mgus2.loc[owner_c == i, ["etime_days", "event", "sex", "age"]].to_csv(
            site / "competing.csv", index=False
        )
        (site / "site.toml").write_text(
            f'[site]\nid = "{name}"\ncountry = "{country}"\n\n'
            '[data.analysis]\npath = "analysis.csv"\n\n'
            '[data.competing]\npath = "competing.csv"\n\n'
            "[policy]\nmin_cell = 5\nmin_grid_days = 30\n",
            encoding="utf-8",
        )
        print(f"wrote {site}/ ({int((owner_a == i).sum())} + {int((owner_c == i).sum())} rows)")


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "out/demo/sites"))
