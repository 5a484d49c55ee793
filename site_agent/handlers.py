"""Answering queries: study analysis + site rows -> fixed-shape summary.

The agent prepares each analysis's rows once (validation included) and then
answers any number of rounds from the cached arrays, so a Cox fit does not
re-read files per Newton step.
"""

from __future__ import annotations

from collections.abc import Sequence

import pandas as pd

from her2fed.cox import CoxRows
from her2fed.errors import DataError, ProtocolError
from her2fed.protocol import Prepared, Query, local_summary
from her2fed.study import Analysis, Study
from her2fed.summary import Additive
from site_agent.config import SiteConfig
from site_agent.data import load_table, prepare


class SiteAgent:
    def __init__(
        self, config: SiteConfig, study: Study, tables: dict[str, pd.DataFrame] | None = None
    ) -> None:
        """``tables`` pre-loads tables by dataset name (tests, or data read elsewhere)."""
        self.config = config
        self.study = study
        self._tables: dict[str, pd.DataFrame] = dict(tables or {})
        self._rows: dict[str, Prepared] = {}
        self._cox_cache: dict[str, CoxRows] = {}

    @property
    def site_id(self) -> str:
        return self.config.site_id

    def table(self, name: str) -> pd.DataFrame:
        if name not in self._tables:
            if name not in self.config.tables:
                raise DataError(
                    f"{self.config.path}: data.{name}",
                    f"the study reads dataset {name!r}, which this site does not declare",
                    f'add [data.{name}] path = "{name}.csv" to the site config',
                )
            self._tables[name] = load_table(
                self.config.tables[name], f"{self.config.path} [data.{name}]"
            )
        return self._tables[name]

    def analysis(self, analysis_id: str) -> Analysis:
        try:
            return self.study.analysis(analysis_id)
        except KeyError:
            raise ProtocolError(
                f"query names analysis {analysis_id!r}, which is not in the study this site "
                "accepted; refused"
            ) from None

    def rows(self, analysis_id: str) -> Prepared:
        if analysis_id not in self._rows:
            analysis = self.analysis(analysis_id)
            path = self.config.tables.get(analysis.dataset, self.config.path)
            self._rows[analysis_id] = prepare(self.table(analysis.dataset), analysis, str(path))
        return self._rows[analysis_id]

    def answer(self, queries: Sequence[Query]) -> list[Additive]:
        return [
            local_summary(
                self.study.grid,
                self.analysis(q.analysis_id),
                self.rows(q.analysis_id),
                q,
                self._cox_cache,
            )
            for q in queries
        ]
