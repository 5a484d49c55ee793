"""Differencing protection: the site remembers whom each answered analysis covered.

Two releases whose cohorts differ by one patient give that patient's data
away by subtraction (KM of everyone, then KM of everyone but the one aged 47),
however well each release alone passes the small-cell rules. So before a site
answers an analysis it compares the analysis's cohort at this site with every
cohort it answered before in the same family of releases (event-table curves,
Cox models, line-level attrition and pathways); a cohort that differs from an
earlier one by 1 to ``min_cell - 1`` patients is refused. The same analysis
of the same study asked again is not a new cohort.

Only keyed 64-bit fingerprints are kept (SipHash of the row's identity under a
key derived from the site's identity key), never ids or values: the files in
``cohorts/`` next to site.toml say nothing without the site's key. Rows are
identified by ``patient_id`` (and ``line`` for per-line rows) in the registry,
and by their whole content in a generic table (with an occurrence number, so
two patients with identical rows stay two).

The check is made by the site agent on the live query path; a consortium that
updates its data by fewer than ``min_cell`` patients between studies meets it
on purpose. The privacy officer can retire a study's fingerprints by removing
its lines from ``cohorts/index.jsonl`` (see docs/privacy.md).
"""

from __future__ import annotations

import hashlib
import hmac
import io
import json
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd
from numpy.typing import NDArray

from her2fed.study import Analysis
from site_agent.atomic import write_atomic
from site_agent.policy import PolicyRefusal

DIRECTORY = "cohorts"
INDEX = "index.jsonl"
RULE = "min_cell_differencing"

FAMILIES = {
    "km": "curves",
    "nelson_aalen": "curves",
    "cif": "curves",
    "logrank": "curves",
    "cox": "cox",
    "attrition": "lines",
    "pathways": "lines",
}
"""Releases that can be subtracted from each other are compared; others are not."""

Fingerprints = NDArray[np.uint64]


def fingerprint_key(site_key_bytes: bytes) -> str:
    """The 16-character SipHash key pandas takes, derived from the site's private key."""
    return hmac.new(site_key_bytes, b"her2fed cohort fingerprints v1", hashlib.sha256).hexdigest()[
        :16
    ]


def fingerprints(
    frame: pd.DataFrame, rows: NDArray[np.int64], id_columns: Sequence[str], key: str
) -> Fingerprints:
    """Sorted keyed fingerprints of ``frame``'s rows at ``rows`` (one per patient or line)."""
    if len(rows) == 0:
        return np.zeros(0, dtype=np.uint64)
    chosen = frame.iloc[rows]
    cols = list(id_columns) or list(frame.columns)
    ids = chosen[cols].reset_index(drop=True)
    # identical rows are different patients: number each repeat
    ids["__occurrence"] = ids.groupby(cols, dropna=False, sort=False).cumcount()
    hashed = pd.util.hash_pandas_object(ids, index=False, hash_key=key)
    return np.sort(hashed.to_numpy(dtype=np.uint64))


class CohortMemory:
    """The site's record of answered cohorts, checked before each new analysis."""

    def __init__(self, site_dir: Path, study_hash: str, key: str) -> None:
        self.directory = site_dir / DIRECTORY
        self.study_hash = study_hash
        self.key = key

    def fingerprints(
        self, frame: pd.DataFrame, rows: NDArray[np.int64], id_columns: Sequence[str]
    ) -> Fingerprints:
        return fingerprints(frame, rows, id_columns, self.key)

    def _index(self) -> list[dict[str, str]]:
        path = self.directory / INDEX
        if not path.exists():
            return []
        return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line]

    def check_and_remember(self, analysis: Analysis, cohort: Fingerprints, min_cell: int) -> None:
        """Refuse (``PolicyRefusal``) a cohort 1..min_cell-1 patients away from an earlier one."""
        family = FAMILIES.get(analysis.kind, analysis.kind)
        seen_here = False
        for entry in self._index():
            same = entry["study"] == self.study_hash and entry["analysis"] == analysis.id
            seen_here |= same
            if same or entry["family"] != family:
                continue
            earlier = np.load(self.directory / entry["file"])
            differ = int(np.setxor1d(cohort, earlier, assume_unique=True).size)
            if 0 < differ < min_cell:
                raise PolicyRefusal(
                    RULE,
                    min_cell,
                    f"analysis {analysis.id!r} covers a cohort at this site that differs by fewer "
                    f"than {min_cell} patients from the cohort of analysis {entry['analysis']!r} "
                    f"of study {entry['study'][:19]}… answered on {entry['time'][:10]}; the two "
                    "releases together would single those patients out",
                    f"change the cohort by at least {min_cell} patients, or the privacy officer "
                    "retires the earlier study's fingerprints (docs/privacy.md)",
                )
        if not seen_here:
            self._remember(analysis, family, cohort)

    def _remember(self, analysis: Analysis, family: str, cohort: Fingerprints) -> None:
        self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        digest = hashlib.sha256(f"{self.study_hash}\0{analysis.id}".encode()).hexdigest()[:24]
        name = f"{digest}.npy"
        buf = io.BytesIO()
        np.save(buf, cohort)
        write_atomic(self.directory / name, buf.getvalue(), mode=0o600)
        entry = {
            "study": self.study_hash,
            "analysis": analysis.id,
            "family": family,
            "file": name,
            "time": datetime.now(UTC).isoformat(timespec="seconds"),
        }
        with open(self.directory / INDEX, "a", encoding="utf-8") as f:
            f.write(json.dumps(entry, sort_keys=True) + "\n")
