"""HTML rendering: one self-contained file (no scripts run, no network), readable and printable.

The first screen answers the reader's questions: for a subject report, what
the person allowed, for what and since when; for a period report, what
changed and how much; for both, whether to trust it (the trust panel, filled
in by running verify-report on the document before rendering). The signed
JSON document is embedded, and a second signed note covers every byte of the
page around it, so `consent-ledger verify-report` checks the HTML file too.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from html import escape
from typing import Any

import orjson

from ledger.reports import charts
from ledger.reports.envelope import PLACEHOLDER, SCRIPT_ID, LoadedReport, seal_page
from ledger.reports.period import entry_bodies
from ledger.reports.verify import ReportVerification, verify_report
from ledger.tlog.notes import NoteSigner

MAX_CHANGE_ROWS = 500

REASONS = {
    "consent": "consent given",
    "refused": "refused",
    "withdrawn": "withdrawn",
    "default-allow": "allowed by default",
    "default-deny": "not without consent",
    "explicit-consent-required": "needs explicit consent",
    "prohibited": "never used",
    "minor": "minor: never used",
    "erased": "erased",
    "unknown-subject": "unknown",
}

STYLE = """
:root { --ok: #0b6e3f; --no: #a33a12; --muted: #5b6470; --line: #d9dde3; }
* { box-sizing: border-box; }
body { font: 15px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; color: #1d2430;
       margin: 0 auto; max-width: 1180px; padding: 20px 28px; }
h1 { font-size: 24px; margin: 0 0 2px; } h2 { font-size: 18px; margin: 26px 0 8px; }
.sub { color: var(--muted); margin: 0 0 14px; }
.top { display: grid; grid-template-columns: 1.45fr 1fr; gap: 18px; align-items: start; }
.card { border: 1px solid var(--line); border-radius: 8px; padding: 12px 16px; }
.trust { border: 2px solid var(--ok); background: #f1faf4; }
.trust.bad { border-color: var(--no); background: #fdf1ec; }
.trust h2 { margin: 0 0 6px; font-size: 16px; color: var(--ok); }
.trust.bad h2 { color: var(--no); }
.trust ul { margin: 4px 0 6px 18px; padding: 0; font-size: 13px; }
code, .mono { font: 12px/1.35 ui-monospace, "DejaVu Sans Mono", monospace; word-break: break-all; }
table { border-collapse: collapse; width: 100%; font-size: 13px; }
th, td { border-bottom: 1px solid var(--line); padding: 4px 6px; text-align: left;
         vertical-align: top; }
th { background: #f4f6f8; }
td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; }
.allowed li { margin: 3px 0; }
.yes { color: var(--ok); font-weight: 600; } .no { color: var(--no); }
.grid td { text-align: center; font-size: 12px; }
.grid td.y { background: #dcf2e4; color: var(--ok); font-weight: 600; }
.grid td.n { background: #fbe9e2; color: var(--no); }
.figures { display: flex; gap: 10px; flex-wrap: wrap; }
.figure { border: 1px solid var(--line); border-radius: 8px; padding: 8px 12px; min-width: 128px; }
.figure b { display: block; font-size: 22px; }
.chart svg { width: 100%; max-width: 980px; height: auto; }
.chart.heat svg { max-width: 640px; }
details { margin: 8px 0; } summary { cursor: pointer; color: var(--muted); }
pre { white-space: pre-wrap; word-break: break-all; font-size: 11px; }
@media print {
  body { max-width: none; padding: 0; font-size: 11pt; }
  .top { grid-template-columns: 1.4fr 1fr; }
  table, .chart, .card, .figure { break-inside: avoid; }
  details > *:not(summary) { display: none; }
  a { color: inherit; text-decoration: none; }
}
@page { size: A4; margin: 14mm; }
"""


def render_html(document: dict[str, Any], signer: NoteSigner) -> str:
    """The HTML report for a signed document, itself signed and holding the document."""
    if hasattr(document["report"].get("entries"), "raw"):
        # A freshly built period report holds raw entry bytes: read it as a verifier would.
        document = orjson.loads(orjson.dumps(document))
    checked = verify_report(LoadedReport(document), [signer.verifier_key])
    content = document["report"]
    if content["kind"] == "subject":
        title, body = _subject(content, checked)
    else:
        title, body = _period(content, checked)
    page = (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        '<meta http-equiv="Content-Security-Policy" content="default-src \'none\'; '
        "style-src 'unsafe-inline'; img-src data:\">"
        f"<title>{escape(title)}</title><style>{STYLE}</style></head><body>\n"
        f"{body}\n"
        f'<script type="application/json" id="{SCRIPT_ID}">{PLACEHOLDER}</script>\n'
        "</body></html>\n"
    )
    return seal_page(page, document, signer)


# --- pieces ------------------------------------------------------------------------------


def _trust(content: dict[str, Any], checked: ReportVerification, evidence: str) -> str:
    key = checked.signed_by[0]
    items = "".join(f"<li>{escape(line)}</li>" for line in checked.checks[1:])
    return (
        '<div class="card trust"><h2>&#10004; Signed by the ledger and checked</h2>'
        f"<div>{evidence}</div>"
        f"<ul>{items}</ul>"
        f'<div>Signing key: <span class="mono">{escape(key)}</span></div>'
        f'<div>Report SHA-256: <span class="mono">{escape(checked.sha256)}</span></div>'
        '<div style="margin-top:6px;font-size:13px">Check it yourself, offline: '
        "<code>consent-ledger verify-report THIS-FILE --key KEY</code> "
        "(changing any byte of this file makes it fail).</div></div>"
    )


def _table(headers: Sequence[str], rows: Iterable[Sequence[Any]], numeric: set[int]) -> str:
    head = "".join(
        f'<th class="num">{escape(h)}</th>' if i in numeric else f"<th>{escape(h)}</th>"
        for i, h in enumerate(headers)
    )
    lines = []
    for row in rows:
        cells = "".join(
            f'<td class="num">{_cell(value)}</td>' if i in numeric else f"<td>{_cell(value)}</td>"
            for i, value in enumerate(row)
        )
        lines.append(f"<tr>{cells}</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(lines)}</tbody></table>"


def _cell(value: Any) -> str:
    if value is None:
        return '<span class="no">–</span>'
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return f"{value:,}"
    return escape(str(value))


def _day(timestamp: str | None) -> str:
    return "–" if not timestamp else escape(timestamp[:10])


def _json_details(summary: str, value: Any) -> str:
    text = orjson.dumps(value, option=orjson.OPT_INDENT_2).decode()
    return f"<details><summary>{escape(summary)}</summary><pre>{escape(text)}</pre></details>"


# --- subject -----------------------------------------------------------------------------


def _subject(content: dict[str, Any], checked: ReportVerification) -> tuple[str, str]:
    subject = content["subject"]
    as_of = content["as_of"]
    decisions = {row["seq"]: row for row in content["decisions"]}
    title = f"Consent record for {subject['id']}"
    allowed = []
    for cell in content["eligibility"]:
        if not cell["eligible"]:
            continue
        where = f"<b>{escape(cell['category'])}</b> for <b>{escape(cell['purpose'])}</b>"
        row = decisions.get(cell["decided_by"]) if cell["decided_by"] is not None else None
        if row is not None:
            how = [f"consent given {_day(row['effective'])}", f"via {escape(row['method'])}"]
            if row["notice"]:
                how.append(f"notice {escape(row['notice'])}")
            if row["expires"]:
                how.append(f"until {_day(row['expires'])}")
            how.append(f"entry {row['seq']}")
            since = ", ".join(how)
        else:
            since = (
                f"by default under {escape(subject['regime'])} rules, since registration "
                f"{_day(subject['registered']['time'])} (policy v{as_of['policy_version']})"
            )
        allowed.append(f"<li>{where} — <span class='muted'>{since}</span></li>")
    refused = sum(
        1 for cell in content["eligibility"] if cell["reason"] in ("refused", "withdrawn")
    )
    said_no = sorted(
        {
            cell["decided_by"]
            for cell in content["eligibility"]
            if cell["reason"] in ("refused", "withdrawn") and cell["decided_by"] in decisions
        }
    )
    refusals = "".join(
        f"<li>{'Refused' if row['decision'] == 'denied' else 'Withdrew'} "
        f"<b>{escape(row['category'])}</b> for <b>{escape(row['purpose'])}</b> — "
        f"since {_day(row['effective'])}, via {escape(row['method'])}, entry {row['seq']}</li>"
        for row in (decisions[seq] for seq in said_no)
    )
    allowed_html = (
        f"<ul class='allowed'>{''.join(allowed)}</ul>"
        if allowed
        else "<p class='no'><b>Nothing.</b> No data of this person may be used for any "
        "purpose listed below.</p>"
    )
    header = (
        f"<h1>{escape(title)}</h1>"
        f"<p class='sub'>Ledger <b>{escape(content['origin'])}</b> · as of "
        f"{escape(as_of['at'])} (tree size {as_of['tree_size']:,}) · policy v"
        f"{as_of['policy_version']} · jurisdiction {escape(subject['jurisdiction'] or 'none')} "
        f"({escape(subject['regime'])}){' · minor' if subject['minor'] else ''} · "
        f"registered {_day(subject['registered']['time'])}</p>"
    )
    summary = (
        '<div class="card"><h2 style="margin-top:0">What this person allows</h2>'
        f"{allowed_html}"
        + (
            f"<h3 style='margin:8px 0 2px;font-size:15px'>What this person refused</h3>"
            f"<ul class='allowed'>{refusals}</ul>"
            if refusals
            else ""
        )
        + f"<p class='sub' style='margin:6px 0 0'>{len(allowed)} of "
        f"{len(content['eligibility'])} category × purpose uses allowed; {refused} refused or "
        f"withdrawn by the person; {len(content['decisions'])} decisions on record.</p></div>"
    )
    evidence = (
        f"Every decision below is a log entry proven against checkpoint "
        f"<b>{as_of['tree_size']:,}</b> of <b>{escape(content['origin'])}</b>; "
        f"the subject id <b>{escape(subject['id'])}</b> opens the commitment in its "
        "registration entry."
    )
    top = f'<div class="top">{summary}{_trust(content, checked, evidence)}</div>'
    grid = _grid(content)
    history = _table(
        (
            "entry",
            "recorded",
            "decision",
            "category",
            "purpose",
            "effective",
            "expires",
            "method",
            "notice",
            "explicit",
            "policy",
        ),
        (
            (
                r["seq"],
                r["recorded"][:19].replace("T", " "),
                r["decision"],
                r["category"],
                r["purpose"],
                r["effective"][:19].replace("T", " "),
                r["expires"][:10] if r["expires"] else None,
                r["method"],
                r["notice"],
                r["explicit"],
                r["policy_version"],
            )
            for r in content["decisions"]
        ),
        {0, 10},
    )
    body = (
        header
        + top
        + "<h2>Every category and purpose</h2>"
        + "<p class='sub'>Green: may be used. Red: may not, with the reason.</p>"
        + grid
        + "<h2>Decisions on record (GDPR Art. 7(1))</h2>"
        + (history if content["decisions"] else "<p>No decisions recorded.</p>")
        + "<h2>Machine-readable</h2>"
        + _json_details(
            f"{len(content['consent_records'])} ISO/IEC TS 27560 consent records (DPV)",
            content["consent_records"],
        )
        + _json_details(
            f"Evidence bundle: {len(content['evidence']['entries'])} entries with inclusion proofs",
            content["evidence"],
        )
        + "".join(f"<p class='sub'>{escape(line)}</p>" for line in content["limits"])
    )
    return title, body


def _grid(content: dict[str, Any]) -> str:
    purposes: list[str] = []
    categories: list[str] = []
    cells: dict[tuple[str, str], dict[str, Any]] = {}
    for cell in content["eligibility"]:
        if cell["purpose"] not in purposes:
            purposes.append(cell["purpose"])
        if cell["category"] not in categories:
            categories.append(cell["category"])
        cells[(cell["category"], cell["purpose"])] = cell
    head = "".join(f"<th>{escape(p)}</th>" for p in purposes)
    rows = []
    for category in categories:
        tds = []
        for purpose in purposes:
            cell = cells[(category, purpose)]
            label = REASONS.get(cell["reason"], cell["reason"])
            if cell["eligible"]:
                tds.append(f'<td class="y">&#10004; {escape(label)}</td>')
            else:
                tds.append(f'<td class="n">&#10008; {escape(label)}</td>')
        rows.append(f"<tr><th>{escape(category)}</th>{''.join(tds)}</tr>")
    return (
        f'<table class="grid"><thead><tr><th>category \\ purpose</th>{head}</tr></thead>'
        f"<tbody>{''.join(rows)}</tbody></table>"
    )


# --- period ------------------------------------------------------------------------------


def _period(content: dict[str, Any], checked: ReportVerification) -> tuple[str, str]:
    window = content["window"]
    counts = content["counts"]
    decisions = counts["decisions"]
    total = sum(decisions.values())
    start = window["from"] or "the first entry"
    end = window["to"] or content["generated_at"]
    if window["from"]:
        title = f"Consent changes, {start[:10]} to {end[:10]}"
    else:
        title = f"Consent changes up to {end[:10]}"
    header = (
        f"<h1>{escape(title)}</h1>"
        f"<p class='sub'>Ledger <b>{escape(content['origin'])}</b> · recorded from "
        f"{escape(start)} to {escape(end)} · entries {window['first_seq']:,}–"
        f"{max(window['end_seq'] - 1, window['first_seq']):,} · generated "
        f"{escape(content['generated_at'])}</p>"
    )
    policies = content["policies"]
    changes = len(policies["published"])
    figures = (
        '<div class="figures">'
        + _figure("entries", f"{window['entries']:,}")
        + _figure("decisions", f"{total:,}")
        + _figure("granted", f"{decisions['granted']:,}")
        + _figure("refused", f"{decisions['denied']:,}")
        + _figure("withdrawn", f"{decisions['withdrawn']:,}")
        + _figure("withdrawal rate", _percent(counts["withdrawal_rate"]))
        + _figure("refusal rate", _percent(counts["refusal_rate"]))
        + _figure("policy changes", str(changes))
        + _dataset_figures(content.get("datasets"))
        + "</div>"
    )
    verified = content["verify"]
    if verified is None:
        verify_line = "No full verify was run for this report."
    elif verified.get("ok"):
        verify_line = (
            f"Full verify of the ledger passed: {verified['entries']:,} entries, "
            f"{verified['checkpoints']:,} checkpoints, {verified['subjects']:,} subjects."
        )
    else:
        verify_line = f"FULL VERIFY FAILED: {verified['error']}"
    evidence = (
        f"All {window['entries']:,} entries of the window are in this file and rebuild the "
        f"signed root of checkpoint <b>{window['end_seq']:,}</b>. {escape(verify_line)}"
    )
    summary = (
        '<div class="card"><h2 style="margin-top:0">In this period</h2>'
        f"{figures}{_policy_text(policies)}</div>"
    )
    top = f'<div class="top">{summary}{_trust(content, checked, evidence)}</div>'
    timeline = content["timeline"]
    parts = [header, top]
    over_time = charts.decisions_over_time(timeline)
    rates = charts.rates_over_time(timeline)
    if over_time:
        parts.append("<h2>Decisions over time</h2>")
        parts.append(f'<div class="chart">{over_time}</div>')
    if rates:
        parts.append(f'<div class="chart">{rates}</div>')
    if content["eligibility"]:
        share = charts.eligibility_share(content["eligibility"])
        if share:
            parts.append("<h2>Who may be used, at the end of the period</h2>")
            parts.append(f'<div class="chart heat">{share}</div>')
    parts.append("<h2>Decisions by category</h2>")
    parts.append(_decision_table("category", counts["by_category_decision"]))
    parts.append("<h2>Decisions by regime</h2>")
    parts.append(_decision_table("regime", counts["by_regime_decision"]))
    parts.append("<h2>By purpose and by method</h2>")
    parts.append(
        '<div class="top">'
        + _table(("purpose", "decisions"), sorted(counts["by_purpose"].items()), {1})
        + _table(("method", "decisions"), sorted(counts["by_method"].items()), {1})
        + "</div>"
    )
    parts.append(_datasets(content.get("datasets")))
    parts.append("<h2>Checkpoints</h2>")
    checkpoints = content["checkpoints"]
    parts.append(
        f"<p>{len(checkpoints['published']):,} checkpoints published in the period; "
        f"consistency proof from tree size {window['first_seq']:,} to {window['end_seq']:,} "
        f"({len(checkpoints['consistency_proof'])} hashes).</p>"
        f"<pre>{escape(checkpoints['last'])}</pre>"
    )
    entries = content["entries"]
    shown = entries[:MAX_CHANGE_ROWS]
    parts.append(f"<h2>Changes ({len(entries):,})</h2>")
    if len(entries) > len(shown):
        parts.append(
            f"<p class='sub'>The first {len(shown):,} are listed; all {len(entries):,} are in "
            "the embedded report and in the CSV rendering.</p>"
        )
    parts.append(
        _table(
            ("entry", "recorded", "kind", "subject", "category", "purpose", "decision", "method"),
            (
                (
                    e["seq"],
                    e["time"][:19].replace("T", " "),
                    e["kind"],
                    e["data"].get("subject"),
                    e["data"].get("category"),
                    e["data"].get("purpose"),
                    e["data"].get("decision"),
                    e["data"].get("method"),
                )
                for e in entry_bodies(shown)
            ),
            {0},
        )
    )
    parts.extend(f"<p class='sub'>{escape(line)}</p>" for line in content["limits"])
    return title, "\n".join(parts)


# How each dataset figure is known (see `ledger.reports.figures`).
FROM_ENTRIES = "recomputed from the entries"
FROM_FULFILMENTS = "recomputed from the fulfilments and the entries that closed them"
ATTESTED = "attested by the ledger's signature"


def _datasets(section: dict[str, Any] | None) -> str:
    parts = ["<h2>Datasets and purge obligations</h2>"]
    if section is None:
        parts.append("<p class='sub'>This report was made before the ledger recorded datasets.</p>")
        return "\n".join(parts)
    by_dataset: dict[str, Any] = section["by_dataset"]
    if not by_dataset:
        parts.append(
            "<p>No dataset builds in this period: no build was recorded, purged or retired, "
            "and no purge obligation was opened, fulfilled or outstanding.</p>"
        )
        return "\n".join(parts)
    parts.append(
        "<p class='sub'>Builds, purges and retirements are log entries of this period, so "
        "verify-report recomputes them; so are the obligations fulfilled and the time from "
        "cause to purge (a retirement purges a whole build), from the fulfilments listed in "
        "the report, each checked against the purge or retirement that closed it. Which "
        "records were members, and so the "
        "obligations opened and those still open or overdue at "
        f"{escape(section['at'][:19].replace('T', ' '))}, live outside the log: those "
        "figures are attested by the ledger's signature.</p>"
    )
    chart = charts.dataset_obligations(by_dataset)
    if chart:
        parts.append(f'<div class="chart">{chart}</div>')
    for name, figures in by_dataset.items():
        recorded, purged, retired = figures["recorded"], figures["purged"], figures["retired"]
        obligations = figures["obligations"]
        durations = figures["cause_to_purge_seconds"]
        rows = [
            ("builds recorded", _with_versions(recorded), FROM_ENTRIES),
            ("records in them", recorded["records"], FROM_ENTRIES),
            ("purges", purged["entries"], FROM_ENTRIES),
            ("records purged", purged["records"], FROM_ENTRIES),
            ("… fulfilling an obligation", purged["fulfils"], FROM_ENTRIES),
            ("… removed voluntarily", purged["voluntary"], FROM_ENTRIES),
            ("builds retired", _with_versions(retired), FROM_ENTRIES),
            ("obligations opened", obligations["opened"], ATTESTED),
            ("obligations fulfilled", obligations["fulfilled"], FROM_FULFILMENTS),
            ("obligations cancelled (eligible again)", obligations["cancelled"], ATTESTED),
            ("obligations open at the end", obligations["open_at_end"], ATTESTED),
            ("obligations overdue at the end", obligations["overdue_at_end"], ATTESTED),
            ("cause to purge: median", _duration(durations["median"]), FROM_FULFILMENTS),
            ("cause to purge: 95th percentile", _duration(durations["p95"]), FROM_FULFILMENTS),
            ("cause to purge: longest", _duration(durations["max"]), FROM_FULFILMENTS),
        ]
        parts.append(f"<h3>{escape(name)}</h3>")
        parts.append(_table(("figure", "value", "how it is known"), rows, {1}))
    return "\n".join(parts)


def _dataset_figures(section: dict[str, Any] | None) -> str:
    """The top figures about datasets, when the period has any."""
    if not section or not section["by_dataset"]:
        return ""
    figures = section["by_dataset"].values()
    return (
        _figure("dataset builds", f"{sum(f['recorded']['builds'] for f in figures):,}")
        + _figure("records purged", f"{sum(f['purged']['records'] for f in figures):,}")
        + _figure(
            "obligations overdue at the end",
            f"{sum(f['obligations']['overdue_at_end'] for f in figures):,}",
        )
    )


def _with_versions(part: dict[str, Any]) -> str:
    versions = part["versions"]
    if not versions:
        return "0"
    named = "version" if len(versions) == 1 else "versions"
    return f"{part['builds']:,} ({named} {', '.join(versions)})"


def _duration(seconds: int | None) -> str | None:
    """`2 d 4 h (187,200 s)`: readable, with the exact figure the report states."""
    if seconds is None:
        return None
    days, rest = divmod(seconds, 86_400)
    hours, rest = divmod(rest, 3_600)
    minutes, secs = divmod(rest, 60)
    if days:
        text = f"{days} d {hours} h"
    elif hours:
        text = f"{hours} h {minutes} min"
    elif minutes:
        text = f"{minutes} min {secs} s"
    else:
        return f"{secs} s"
    return f"{text} ({seconds:,} s)"


def _figure(label: str, value: str) -> str:
    return f'<div class="figure"><b>{escape(value)}</b>{escape(label)}</div>'


def _percent(value: str | None) -> str:
    return "–" if value is None else f"{float(value):.1%}"


def _policy_text(policies: dict[str, Any]) -> str:
    start = policies["in_force_at_start"]
    lines = []
    if start is not None:
        lines.append(f"Policy v{start['version']} in force at the start (entry {start['seq']}).")
    for item in policies["published"]:
        lines.append(
            f"Policy v{item['version']} published {escape(item['time'][:19].replace('T', ' '))} "
            f"(entry {item['seq']})."
        )
    return "<p style='margin:10px 0 0'>" + " ".join(lines) + "</p>"


def _decision_table(label: str, table: dict[str, dict[str, int]]) -> str:
    rows = []
    for name, counts in table.items():
        total = sum(counts.values())
        rows.append(
            (
                name,
                counts["granted"],
                counts["denied"],
                counts["withdrawn"],
                total,
                _percent(f"{counts['withdrawn'] / total:.4f}" if total else None),
            )
        )
    return _table(
        (label, "granted", "refused", "withdrawn", "total", "withdrawn %"), rows, {1, 2, 3, 4, 5}
    )
