"""Reading a study file: TOML -> validated ``Study`` plus its content hash.

The hash is over the exact file bytes, so what a privacy officer approves is
byte-for-byte what the coordinator runs.
"""

from __future__ import annotations

import hashlib
import tomllib
from dataclasses import dataclass
from pathlib import Path

from her2fed.errors import SpecError
from her2fed.study import Study, parse_study


@dataclass(frozen=True)
class LoadedStudy:
    study: Study
    path: Path
    sha256: str

    @property
    def hash(self) -> str:
        return f"sha256:{self.sha256}"


def load_study(path: str | Path) -> LoadedStudy:
    p = Path(path)
    try:
        raw = p.read_bytes()
    except FileNotFoundError:
        raise SpecError(str(p), "file not found", "check the path to the study file") from None
    try:
        doc = tomllib.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as err:
        raise SpecError(
            str(p), f"is not valid TOML ({err})", "fix the TOML syntax at that line"
        ) from None
    try:
        study = parse_study(doc)
    except SpecError as err:
        raise err.located(str(p)) from None
    return LoadedStudy(study, p, hashlib.sha256(raw).hexdigest())
