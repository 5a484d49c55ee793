"""Study specifications: parsed and validated from a plain mapping (e.g. TOML).

The study fixes everything public before data are touched: the grid, the
horizon, group and stratum levels, covariate coding. Parsing is strict -
unknown keys are errors - because a typo in a study that silently falls back
to a default is a wrong result nobody notices.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, cast

from her2fed.attrition import A3_HORIZON_DAYS
from her2fed.catalog import ENDPOINTS
from her2fed.cox import Ties
from her2fed.errors import SpecError
from her2fed.grid import TimeGrid
from her2fed.km import CONF_TYPES, ConfType
from her2fed.levels import Covariate, Levels, canon_level
from her2fed.lot import RuleSet

Kind = Literal["km", "nelson_aalen", "logrank", "cif", "cox", "attrition", "pathways"]
KINDS: tuple[str, ...] = ("km", "nelson_aalen", "logrank", "cif", "cox", "attrition", "pathways")
REGISTRY_KINDS = ("attrition", "pathways")
REGISTRY = "registry"

_COMMON = {"id", "kind", "dataset", "time", "event", "endpoint", "lines", "by", "strata"}
_ALLOWED: dict[str, set[str]] = {
    "km": _COMMON | {"conf_type", "conf_level", "quantiles"},
    "nelson_aalen": _COMMON,
    "logrank": _COMMON | {"rho"},
    "cif": _COMMON | {"causes"},
    "cox": _COMMON | {"covariates", "ties", "conf_level"},
    "attrition": {"id", "kind", "dataset", "by", "max_line"},
    "pathways": {"id", "kind", "dataset", "max_line", "min_count"},
}


@dataclass(frozen=True)
class Analysis:
    """One analysis of a study; ``strata_by_site`` means stratify by contributing site."""

    id: str
    kind: Kind
    dataset: str
    time: str
    event: str
    by: Levels | None = None
    strata: tuple[Levels, ...] = ()
    strata_by_site: bool = False
    covariates: tuple[Covariate, ...] = ()
    ties: Ties = "efron"
    conf_type: ConfType = "log"
    conf_level: float = 0.95
    quantiles: tuple[float, ...] = (0.25, 0.5, 0.75)
    rho: float = 0.0
    causes: tuple[int, ...] = (1,)
    endpoint: str | None = None
    lines: tuple[int, ...] = ()
    max_line: int = 4
    min_count: int = 5

    @property
    def group_labels(self) -> tuple[str, ...]:
        return self.by.levels if self.by else ("all",)

    @property
    def n_strata(self) -> int:
        n = 1
        for s in self.strata:
            n *= len(s.levels)
        return n

    @property
    def coef_names(self) -> tuple[str, ...]:
        return tuple(name for c in self.covariates for name in c.names())

    def columns(self) -> tuple[str, ...]:
        """Every data column the analysis reads."""
        if self.kind in REGISTRY_KINDS:
            return (self.by.column,) if self.by else ()
        cols = [self.time, self.event]
        cols += [self.by.column] if self.by else []
        cols += [s.column for s in self.strata]
        cols += [c.column for c in self.covariates]
        return tuple(dict.fromkeys(cols))


@dataclass(frozen=True)
class Study:
    name: str
    grid: TimeGrid
    analyses: tuple[Analysis, ...] = field(default_factory=tuple)
    rules: RuleSet = field(default_factory=RuleSet)  # line-of-therapy rules every site applies
    # total Skellam noise variance on every pooled count (0 = exact; docs/privacy.md)
    dp_noise_variance: float = 0.0

    @property
    def uses_registry(self) -> bool:
        return any(a.dataset == REGISTRY for a in self.analyses)

    def analysis(self, analysis_id: str) -> Analysis:
        for a in self.analyses:
            if a.id == analysis_id:
                return a
        raise KeyError(analysis_id)


def _need(table: Mapping[str, Any], key: str, where: str, kind: type, fix: str) -> Any:
    if key not in table:
        raise SpecError(f"{where}.{key}", "is missing", fix)
    value = table[key]
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise SpecError(f"{where}.{key}", f"must be a {kind.__name__}, got {value!r}", fix)
    return value


def _levels(raw: Any, where: str) -> Levels:
    fix = 'write it as { column = "name", levels = ["A", "B"] }'
    if not isinstance(raw, Mapping):
        raise SpecError(where, f"must be a table, got {raw!r}", fix)
    unknown = set(raw) - {"column", "levels"}
    if unknown:
        raise SpecError(where, f"unknown key(s) {sorted(unknown)}", fix)
    column = _need(raw, "column", where, str, fix)
    levels = _need(raw, "levels", where, list, fix)
    canon = [canon_level(v) for v in levels]
    if not canon or any(c is None for c in canon):
        raise SpecError(f"{where}.levels", "must be a non-empty list of values", fix)
    if len(set(canon)) != len(canon):
        raise SpecError(f"{where}.levels", f"has duplicates: {levels}", "list each level once")
    return Levels(column, tuple(cast(list[str], canon)))


def _covariate(raw: Any, where: str) -> Covariate:
    if isinstance(raw, str):
        return Covariate(raw)
    fix = (
        'write numeric covariates as "name" and categorical ones as '
        '{ column = "name", levels = ["A", "B"], reference = "A" }'
    )
    if not isinstance(raw, Mapping):
        raise SpecError(where, f"must be a column name or a table, got {raw!r}", fix)
    unknown = set(raw) - {"column", "levels", "reference"}
    if unknown:
        raise SpecError(where, f"unknown key(s) {sorted(unknown)}", fix)
    lv = _levels({"column": raw.get("column"), "levels": raw.get("levels")}, where)
    ref = canon_level(raw.get("reference", lv.levels[0]))
    if ref not in lv.levels:
        raise SpecError(
            f"{where}.reference",
            f"{raw.get('reference')!r} is not one of the levels",
            f"choose one of {list(lv.levels)}",
        )
    if len(lv.levels) < 2:
        raise SpecError(
            f"{where}.levels",
            "a categorical covariate needs at least two levels",
            "declare every level, the reference included",
        )
    return Covariate(lv.column, lv.levels, ref)


def _registry_endpoint(
    raw: Mapping[str, Any], kind: str, where: str
) -> tuple[str, str, dict[str, Any]]:
    """Time and event columns of a registry endpoint, plus its line filter."""
    names = sorted(ENDPOINTS)
    for key in ("time", "event"):
        if key in raw:
            raise SpecError(
                f"{where}.{key}",
                "registry analyses name an endpoint, not columns",
                f"remove {key} and set endpoint to one of {names}",
            )
    endpoint = _need(raw, "endpoint", where, str, f"set endpoint to one of {names}")
    info = ENDPOINTS.get(endpoint)
    if info is None:
        raise SpecError(
            f"{where}.endpoint", f"unknown endpoint {endpoint!r}", f"use one of {names}"
        )
    kw: dict[str, Any] = {"endpoint": endpoint}
    if info.competing:
        if kind != "cif":
            raise SpecError(
                f"{where}.kind",
                f"endpoint {endpoint!r} has competing causes (1 next line, 2 death)",
                'use kind = "cif"',
            )
        if "causes" not in raw:
            kw["causes"] = (1, 2)
    if "lines" in raw:
        lines = raw["lines"]
        if not info.per_line:
            raise SpecError(
                f"{where}.lines",
                f"endpoint {endpoint!r} has one row per patient",
                "remove lines, or use a per-line endpoint such as os_from_line_start",
            )
        if (
            not isinstance(lines, list)
            or not lines
            or not all(isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in lines)
        ):
            raise SpecError(
                f"{where}.lines",
                f"must be a list of line numbers, got {lines!r}",
                "e.g. lines = [2] for second-line patients",
            )
        kw["lines"] = tuple(lines)
    return f"{endpoint}_time", f"{endpoint}_event", kw


def _registry_kind_options(raw: Mapping[str, Any], where: str) -> dict[str, Any]:
    kw: dict[str, Any] = {}
    if "max_line" in raw:
        k = _need(raw, "max_line", where, int, "e.g. max_line = 4")
        if not 1 <= k <= 10:
            raise SpecError(
                f"{where}.max_line",
                f"must be 1..10, got {k}",
                "lines beyond it are top-coded into the last one; 4 is usual",
            )
        kw["max_line"] = k
    if "min_count" in raw:
        m = _need(raw, "min_count", where, int, "e.g. min_count = 5")
        if m < 0:
            raise SpecError(f"{where}.min_count", "must be >= 0", "e.g. min_count = 5")
        kw["min_count"] = m
    return kw


def parse_analysis(raw: Any, where: str) -> Analysis:
    if not isinstance(raw, Mapping):
        raise SpecError(where, "must be a table", "write each analysis as an [[analysis]] table")
    aid = _need(raw, "id", where, str, 'give every analysis a unique id = "..."')
    where = f"{where} (id={aid!r})"
    kind = _need(raw, "kind", where, str, f"set kind to one of {list(KINDS)}")
    if kind not in KINDS:
        raise SpecError(f"{where}.kind", f"unknown kind {kind!r}", f"use one of {list(KINDS)}")
    unknown = set(raw) - _ALLOWED[kind]
    if unknown:
        raise SpecError(
            where,
            f"unknown key(s) {sorted(unknown)} for kind {kind!r}",
            f"remove them or use only {sorted(_ALLOWED[kind])}",
        )
    dataset = _need(raw, "dataset", where, str, 'name the site table, e.g. dataset = "analysis"')
    kw: dict[str, Any] = {}
    if kind in REGISTRY_KINDS:
        if dataset != REGISTRY:
            raise SpecError(
                f"{where}.dataset",
                f"kind {kind!r} reads the HER2+ registry",
                'set dataset = "registry"',
            )
        time, event = "", ""
        kw.update(_registry_kind_options(raw, where))
    elif dataset == REGISTRY:
        time, event, reg = _registry_endpoint(raw, kind, where)
        kw.update(reg)
    else:
        for key in ("endpoint", "lines"):
            if key in raw:
                raise SpecError(
                    f"{where}.{key}",
                    'applies only to dataset = "registry"',
                    "remove it, or name time and event columns of your table",
                )
        time = _need(raw, "time", where, str, 'name the follow-up time column, e.g. time = "days"')
        event = _need(raw, "event", where, str, 'name the event column, e.g. event = "status"')
    by = _levels(raw["by"], f"{where}.by") if "by" in raw else None
    strata: tuple[Levels, ...] = ()
    by_site = False
    raw_strata = raw.get("strata")
    if raw_strata == "site":
        by_site = True
    elif isinstance(raw_strata, Sequence) and not isinstance(raw_strata, str):
        strata = tuple(_levels(s, f"{where}.strata[{i}]") for i, s in enumerate(raw_strata))
    elif raw_strata is not None:
        raise SpecError(
            f"{where}.strata",
            f'must be "site" or a list of tables, got {raw_strata!r}',
            'write strata = "site" or strata = [{ column = "c", levels = [1, 2] }]',
        )
    if kind == "logrank":
        if by is None or len(by.levels) < 2:
            raise SpecError(
                f"{where}.by",
                "a log-rank test compares at least two groups",
                'add by = { column = "group", levels = ["A", "B"] }',
            )
        kw["rho"] = (
            _need(raw, "rho", where, float, "rho must be a number >= 0") if "rho" in raw else 0.0
        )
    if kind in ("km", "cox") and "conf_level" in raw:
        level = _need(raw, "conf_level", where, float, "use a number such as 0.95")
        if not 0 < level < 1:
            raise SpecError(
                f"{where}.conf_level", f"must be between 0 and 1, got {level}", "use 0.95"
            )
        kw["conf_level"] = level
    if kind == "km":
        if "conf_type" in raw:
            ct = raw["conf_type"]
            if ct not in CONF_TYPES:
                raise SpecError(
                    f"{where}.conf_type", f"unknown {ct!r}", f"use one of {list(CONF_TYPES)}"
                )
            kw["conf_type"] = ct
        if "quantiles" in raw:
            qs = raw["quantiles"]
            if not isinstance(qs, list) or not all(
                isinstance(q, int | float) and 0 < q < 1 for q in qs
            ):
                raise SpecError(
                    f"{where}.quantiles",
                    f"must be numbers in (0, 1), got {qs!r}",
                    "e.g. quantiles = [0.25, 0.5, 0.75]",
                )
            kw["quantiles"] = tuple(float(q) for q in qs)
    if kind == "cif" and "causes" not in kw:
        causes = _need(raw, "causes", where, list, "list the event codes, e.g. causes = [1, 2]")
        if not causes or not all(
            isinstance(c, int) and not isinstance(c, bool) and c > 0 for c in causes
        ):
            raise SpecError(
                f"{where}.causes",
                f"must be positive whole numbers, got {causes!r}",
                "code causes 1, 2, ... and censoring 0",
            )
        kw["causes"] = tuple(causes)
    if kind == "cox":
        covs = _need(raw, "covariates", where, list, 'list them, e.g. covariates = ["age"]')
        if not covs:
            raise SpecError(f"{where}.covariates", "is empty", "list at least one covariate")
        kw["covariates"] = tuple(
            _covariate(c, f"{where}.covariates[{i}]") for i, c in enumerate(covs)
        )
        if "ties" in raw:
            if raw["ties"] not in ("efron", "breslow"):
                raise SpecError(
                    f"{where}.ties", f"unknown {raw['ties']!r}", 'use "efron" or "breslow"'
                )
            kw["ties"] = raw["ties"]
    return Analysis(aid, kind, dataset, time, event, by, strata, by_site, **kw)


def parse_study(doc: Mapping[str, Any]) -> Study:
    """A validated ``Study`` from a study document (already read from TOML)."""
    unknown = set(doc) - {"study", "analysis", "lot"}
    if unknown:
        raise SpecError(
            "",
            f"unknown top-level table(s) {sorted(unknown)}",
            "use only [study], [lot] and [[analysis]]",
        )
    head = doc.get("study")
    if not isinstance(head, Mapping):
        raise SpecError(
            "study",
            "the [study] table is missing",
            'add [study] with name, time_unit = "day", grid_days and horizon_days',
        )
    unknown = set(head) - {"name", "time_unit", "grid_days", "horizon_days", "dp_noise_variance"}
    if unknown:
        raise SpecError(
            "study",
            f"unknown key(s) {sorted(unknown)}",
            "use name, time_unit, grid_days, horizon_days, dp_noise_variance",
        )
    name = _need(head, "name", "study", str, 'add name = "..."')
    unit = head.get("time_unit", "day")
    if unit != "day":
        raise SpecError(
            "study.time_unit",
            f"unsupported unit {unit!r}",
            'times are whole days: set time_unit = "day"',
        )
    grid = TimeGrid(
        _need(head, "grid_days", "study", int, "set grid_days = 30"),
        _need(head, "horizon_days", "study", int, "set horizon_days = 3650"),
    )
    raw_analyses = doc.get("analysis")
    if not isinstance(raw_analyses, list) or not raw_analyses:
        raise SpecError(
            "analysis",
            "the study has no [[analysis]] tables",
            "add at least one [[analysis]] with id, kind, dataset, time, event",
        )
    analyses = tuple(parse_analysis(a, f"analysis[{i}]") for i, a in enumerate(raw_analyses))
    ids = [a.id for a in analyses]
    dup = sorted({i for i in ids if ids.count(i) > 1})
    if dup:
        raise SpecError("analysis", f"duplicate id(s) {dup}", "give every analysis a unique id")
    for a in analyses:
        if a.kind == "attrition" and grid.horizon_days < A3_HORIZON_DAYS:
            raise SpecError(
                "study.horizon_days",
                f"attrition definition A3 reads the next-line CIF at {A3_HORIZON_DAYS} days, "
                f"beyond the study horizon of {grid.horizon_days}",
                f"set horizon_days >= {A3_HORIZON_DAYS}",
            )
    return Study(name, grid, analyses, _rules(doc.get("lot", {})), _dp_variance(head))


def _dp_variance(head: Mapping[str, Any]) -> float:
    """The study's declared DP noise variance: absent = 0 (exact), else finite and >= 0."""
    if "dp_noise_variance" not in head:
        return 0.0
    fix = "set dp_noise_variance to the total noise variance, e.g. 25 (0 or absent = exact)"
    v: float = _need(head, "dp_noise_variance", "study", float, fix)
    if not math.isfinite(v) or v < 0:
        raise SpecError("study.dp_noise_variance", f"must be finite and >= 0, got {v}", fix)
    return v


_RULE_KEYS = ("window_days", "gap_days", "continuing_days")


def _rules(raw: Any) -> RuleSet:
    """The study's line-of-therapy parameters; anything not given keeps the default."""
    if not isinstance(raw, Mapping):
        raise SpecError("lot", "must be a table", "write [lot] with window_days = 28 etc.")
    unknown = set(raw) - set(_RULE_KEYS)
    if unknown:
        raise SpecError("lot", f"unknown key(s) {sorted(unknown)}", f"use {list(_RULE_KEYS)}")
    for key, value in raw.items():
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise SpecError(
                f"lot.{key}",
                f"must be a whole number of days >= 1, got {value!r}",
                f"e.g. {key} = {getattr(RuleSet(), key)}",
            )
    return RuleSet(**raw)
