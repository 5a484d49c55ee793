"""The HTML document: header, contents, one section per analysis, provenance.

One file with inline CSS and inline SVG, and a Content-Security-Policy that
forbids every network fetch, so the report opens the same offline, in an
e-mail attachment or printed, and cannot leak that it was opened.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any

from coordinator.reporting import fmt, registry
from coordinator.reporting.fmt import esc, fnum
from coordinator.reporting.markup import Cell, CellLike, Ctx, kv_table, note, table
from coordinator.reporting.sections import KIND_TITLES, PER_SITE_NOT_DRAWN, SURVIVAL_RENDERERS

RENDERERS = {
    **SURVIVAL_RENDERERS,
    "attrition": registry.render_attrition,
    "pathways": registry.render_pathways,
}

CSP = "default-src 'none'; style-src 'unsafe-inline'; img-src data:"

CSS = """
:root { color-scheme: light; }
* { box-sizing: border-box; }
body { margin: 0; background: #fff; color: #1a1a1a;
  font: 14px/1.45 'DejaVu Sans', 'Liberation Sans', Arial, Helvetica, sans-serif; }
header, nav, main, footer { max-width: 980px; margin: 0 auto; padding: 0 24px; }
header { padding-top: 20px; }
h1 { font-size: 24px; margin: 0 0 4px; }
h2 { font-size: 19px; margin: 36px 0 10px; padding-bottom: 4px; border-bottom: 2px solid #0072B2; }
h3 { font-size: 15px; margin: 22px 0 8px; }
.sub { color: #444; margin: 0 0 12px; }
.kind { font-size: 12px; font-weight: normal; color: #444; border: 1px solid #aaa;
  border-radius: 3px; padding: 0 5px; margin-left: 8px; vertical-align: middle; }
table { border-collapse: collapse; margin: 6px 0 18px; font-size: 13px;
  font-variant-numeric: tabular-nums; }
caption { caption-side: top; text-align: left; padding: 0 0 4px; color: #222; font-size: 12.5px; }
th, td { padding: 3px 10px; border-bottom: 1px solid #ddd; text-align: left; vertical-align: top; }
thead th { border-bottom: 1.5px solid #333; font-weight: 600; }
th.num { text-align: right; }
td.num { text-align: right; white-space: nowrap; }
table.kv th { font-weight: 600; padding-right: 18px; }
figure { margin: 10px 0 22px; break-inside: avoid; page-break-inside: avoid; }
figure svg { display: block; max-width: 100%; height: auto; }
figcaption { font-size: 12.5px; color: #333; margin-top: 6px; max-width: 760px; }
.note { border-left: 4px solid #E69F00; background: #fff8e8; padding: 6px 10px; margin: 8px 0; }
.test { margin: 0 0 12px; }
table.pathways td { max-width: 360px; }
.pair { white-space: nowrap; }
table.wide { font-size: 12px; }
code { font-family: 'DejaVu Sans Mono', 'Liberation Mono', monospace; font-size: 12px;
  word-break: break-all; }
nav ol { padding-left: 22px; margin: 6px 0 0; }
ul.plain { margin: 0; padding-left: 0; list-style: none; }
footer { color: #555; font-size: 12px; margin-top: 36px; padding-bottom: 24px; }
@page { size: A4; margin: 14mm 12mm; }
@media print {
  body { font-size: 10pt; }
  header, nav, main, footer { max-width: none; padding: 0; }
  section.analysis, section.provenance { break-before: page; page-break-before: always; }
  h2, h3 { break-after: avoid; page-break-after: avoid; }
  table, tr { break-inside: avoid; page-break-inside: avoid; }
  a { color: inherit; text-decoration: none; }
  .note { background: none; }
}
"""


def _anchor(aid: str, used: set[str]) -> str:
    base = "a-" + (re.sub(r"[^A-Za-z0-9_-]+", "-", aid).strip("-") or "analysis")
    anchor, n = base, 1
    while anchor in used:
        n += 1
        anchor = f"{base}-{n}"
    used.add(anchor)
    return anchor


def _section(ctx: Ctx, aid: str, entry: Mapping[str, Any], anchor: str) -> str:
    kind = str(entry.get("kind", "unknown"))
    head = f'<h2>{esc(aid)}<span class="kind">{esc(kind)}</span></h2>'
    renderer = RENDERERS.get(kind)
    if renderer is None:
        body = note(
            f"Analysis kind {kind!r} is not rendered by this version of the report "
            "(not rendered); its numbers are in results.json."
        )
    else:
        try:
            body = renderer(ctx, aid, entry)
        except (
            KeyError,
            TypeError,
            ValueError,
            IndexError,
            ZeroDivisionError,
            AttributeError,
        ) as e:
            # a malformed entry costs its own section, never the whole report
            body = note(f"This analysis could not be rendered ({type(e).__name__}: {e}).")
        per_site = entry.get("per_site")
        if kind in PER_SITE_NOT_DRAWN and isinstance(per_site, Mapping) and per_site:
            body += note(
                "Per-site estimates were released by "
                + ", ".join(ctx.site_label(str(s)) for s in per_site)
                + "; this report draws per-site results for km, cox, logrank, attrition and "
                "pathways only; see results.json."
            )
    return f'<section class="analysis" id="{anchor}">{head}{body}</section>'


def _dropouts(study: Mapping[str, Any]) -> dict[str, str]:
    out: dict[str, str] = {}
    for d in study.get("dropouts") or []:
        if isinstance(d, Mapping):
            site = str(d.get("site", "?"))
            detail = ", ".join(f"{k}: {v}" for k, v in d.items() if k != "site")
            out[site] = detail or "dropped out"
        else:
            out[str(d)] = "dropped out"
    return out


def _plain(v: Any) -> str:
    if v is None:
        return fmt.NA
    if isinstance(v, bool):
        return "yes" if v else "no"
    return str(v)


def _value(v: Any) -> CellLike:
    if isinstance(v, list) and all(isinstance(x, str | int | float) for x in v):
        return Cell(", ".join(str(x) for x in v), num=False)
    if isinstance(v, Mapping) and all(not isinstance(x, Mapping | list) for x in v.values()):
        items = "".join(
            f"<li>{esc(str(k).replace('_', ' '))}: {esc(_plain(x))}</li>" for k, x in v.items()
        )
        return Cell(f'<ul class="plain">{items}</ul>', num=False, html=True)
    if isinstance(v, Mapping | list):
        return Cell(
            f"<code>{esc(json.dumps(v, sort_keys=True, ensure_ascii=False))}</code>",
            num=False,
            html=True,
        )
    if v is None:
        return Cell(fmt.NA, num=False)
    if isinstance(v, bool):
        return Cell("yes" if v else "no", num=False)
    return Cell(str(v), num=False)


HANDLED = {
    "name",
    "hash",
    "sites",
    "countries",
    "dropouts",
    "disclosure",
    "rule_set",
    "software",
    "generated",
}


def _provenance(ctx: Ctx, doc: Mapping[str, Any]) -> str:
    study = doc.get("study") if isinstance(doc.get("study"), Mapping) else {}
    assert isinstance(study, Mapping)
    parts = ['<section class="provenance" id="provenance"><h2>Provenance</h2>']
    items: list[tuple[str, CellLike]] = [
        ("Study", Cell(str(study.get("name", "NA")), num=False)),
        (
            "Study hash (SHA-256 of the study file)",
            Cell(str(study.get("hash", "NA")), "study|hash", num=False),
        ),
        (
            "Results generated",
            Cell(str(study.get("generated", "NA")), "study|generated", num=False),
        ),
    ]
    items += [(k.replace("_", " "), _value(v)) for k, v in study.items() if k not in HANDLED]
    parts.append(kv_table(ctx, "Study and run.", items))

    countries = study.get("countries") if isinstance(study.get("countries"), Mapping) else {}
    assert isinstance(countries, Mapping)
    drop = _dropouts(study)
    per_site_sites = {
        s
        for e in (doc.get("analyses") or {}).values()
        if isinstance(e, Mapping) and isinstance(e.get("per_site"), Mapping)
        for s, v in e["per_site"].items()
        if isinstance(v, Mapping)
    }
    sites = [str(s) for s in study.get("sites") or []]
    rows: list[list[CellLike]] = []
    for s in sites + [d for d in drop if d not in sites]:
        rows.append(
            [
                Cell(s, num=False),
                Cell(str(countries.get(s, "NA")), num=False),
                Cell(
                    "dropped out: " + drop[s] if s in drop else "contributed",
                    f"study|site|{s}",
                    num=False,
                ),
                Cell("yes" if s in per_site_sites else "no (pooled only)", num=False),
            ]
        )
    n_c = len({countries[s] for s in sites if s in countries and s not in drop})
    parts.append(
        table(
            ctx,
            f"Sites: {len([s for s in sites if s not in drop])} contributing"
            + (f" from {n_c} countries" if n_c else "")
            + (f", {len(drop)} dropped out." if drop else "."),
            ["Site", "Country", "Status", "Per-site release"],
            rows,
        )
    )
    rule_set = study.get("rule_set")
    if isinstance(rule_set, Mapping):
        parts.append(
            kv_table(
                ctx,
                "Line-of-therapy rule set applied by every site.",
                [(str(k).replace("_", " "), _value(v)) for k, v in rule_set.items()],
            )
        )
    else:
        parts.append(note("Rule-set version: not recorded in results.json (no registry analysis)."))
    disc = study.get("disclosure")
    ditems: list[tuple[str, CellLike]] = [
        (
            "Minimum cell count (display threshold of this report)",
            Cell(str(ctx.min_cell), "study|min_cell"),
        ),
    ]
    if isinstance(disc, Mapping):
        ditems += [
            (
                "Cells suppressed",
                Cell(fmt.integer(disc.get("suppressed_cells")), "study|suppressed_cells"),
            ),
        ]
        ditems += [
            (str(k).replace("_", " "), _value(v))
            for k, v in disc.items()
            if k not in ("min_cell", "suppressed_cells", "actions")
        ]
        actions = [str(a) for a in disc.get("actions") or []]
        ditems.append(
            (
                "Disclosure actions",
                Cell(
                    "<ul>" + "".join(f"<li>{esc(a)}</li>" for a in actions) + "</ul>"
                    if actions
                    else "none recorded",
                    num=False,
                    html=bool(actions),
                ),
            )
        )
    else:
        ditems.append(("Disclosure actions", Cell("not recorded in results.json", num=False)))
    parts.append(
        kv_table(
            ctx,
            f"Disclosure control. The report additionally shows every non-zero count below "
            f"{ctx.min_cell} as <{ctx.min_cell}.",
            ditems,
        )
    )
    software = study.get("software")
    if isinstance(software, Mapping):
        parts.append(
            kv_table(ctx, "Software versions.", [(str(k), _value(v)) for k, v in software.items()])
        )
    parts.append("</section>")
    return "".join(parts)


def render(doc: Mapping[str, Any]) -> str:
    study_any = doc.get("study")
    study: Mapping[str, Any] = study_any if isinstance(study_any, Mapping) else {}
    disclosure = study.get("disclosure")
    min_cell = fnum(disclosure.get("min_cell")) if isinstance(disclosure, Mapping) else None
    countries = study.get("countries")
    ctx = Ctx(
        min_cell=int(min_cell) if min_cell is not None and min_cell >= 1 else 5,
        countries={str(k): str(v) for k, v in countries.items()}
        if isinstance(countries, Mapping)
        else {},
        sites=[str(x) for x in study.get("sites") or [] if str(x) not in _dropouts(study)],
    )
    name = str(study.get("name", "her2fed study"))
    analyses_any = doc.get("analyses")
    analyses: Mapping[str, Any] = analyses_any if isinstance(analyses_any, Mapping) else {}
    used: set[str] = set()
    sections, toc = [], []
    for aid, entry in analyses.items():
        anchor = _anchor(str(aid), used)
        e = entry if isinstance(entry, Mapping) else {"kind": "unknown"}
        kind = str(e.get("kind", "unknown"))
        sections.append(_section(ctx, str(aid), e, anchor))
        toc.append(
            f'<li><a href="#{anchor}">{esc(aid)}</a> — {esc(KIND_TITLES.get(kind, kind))}</li>'
        )
    toc.append('<li><a href="#provenance">Provenance</a></li>')
    sites = [str(s) for s in study.get("sites") or []]
    countries_used = sorted({ctx.countries[s] for s in sites if s in ctx.countries})
    n_drop = len([d for d in _dropouts(study) if d not in sites])
    sub = (
        f"Federated results over {len(sites)} site(s)"
        + (
            f" in {len(countries_used)} countries ({', '.join(countries_used)})"
            if countries_used
            else ""
        )
        + (f", {n_drop} dropped out" if n_drop else "")
        + f" · study hash {str(study.get('hash', 'NA'))[:19]}… · results generated "
        f"{study.get('generated', 'NA')}"
    )
    agg = study.get("aggregation")
    method = agg.get("method") if isinstance(agg, Mapping) else agg
    # a run without secure aggregation is a rehearsal; say so where nobody can miss it
    insecure = isinstance(method, str) and ("not" in method or "plain" in method)
    banner = note(f"Aggregation: {method}.") if insecure else ""
    dp = agg.get("differential_privacy") if isinstance(agg, Mapping) else None
    if isinstance(dp, Mapping):  # noisy numbers must never pass for exact ones
        banner += note(
            f"Differential privacy: every pooled count carries noise of variance "
            f"{dp.get('noise_variance')}; estimates are approximate and confidence intervals "
            "do not include the noise (docs/privacy.md)."
        )
    return (
        "<!DOCTYPE html>\n"
        '<html lang="en"><head><meta charset="utf-8">'
        f'<meta http-equiv="Content-Security-Policy" content="{CSP}">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{esc(name)} — her2fed report</title><style>{CSS}</style></head><body>"
        f'<header><h1>{esc(name)}</h1><p class="sub">{esc(sub)}</p>{banner}</header>'
        f"<nav><h2>Contents</h2><ol>{''.join(toc)}</ol></nav>"
        f"<main>{''.join(sections)}{_provenance(ctx, doc)}</main>"
        "<footer>her2fed report · times in months (days / 30.4375) · counts below the minimum "
        f"cell size ({ctx.min_cell}) shown as &lt;{ctx.min_cell} · NA: not estimable / not "
        "available · every number comes from results.json.</footer>"
        "</body></html>\n"
    )
