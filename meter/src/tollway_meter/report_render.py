"""A cost report as a terminal table, JSON, an HTML page (with an inline SVG chart of the daily
spend, from the console's chart geometry, or an <img> of the same chart for the e-mail) and a CSV of
its lines. Amounts are Decimal strings with 9 fraction digits, never floats."""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import jinja2

from tollway_meter.console.chart import bar_chart, time_series
from tollway_meter.report import LINE_COLUMNS, CostReport
from tollway_sidecar.contract.usage_event import nanos_to_usd

FORMATS = ("text", "json", "html", "csv")


def usd(nanos: int) -> str:
    return format(nanos_to_usd(nanos), "f")


def change_percent(report: CostReport) -> str:
    """The change vs the previous period, to a tenth of a percent (exact decimal arithmetic)."""
    if report.previous_cost_nanos == 0:
        return "n/a"
    ratio = Decimal(report.change_nanos * 100) / Decimal(report.previous_cost_nanos)
    return f"{ratio.quantize(Decimal('0.1')):+}%"


def daily_series(report: CostReport) -> list[tuple[str, int]]:
    """(YYYY-MM-DD, nano-USD) for every day of the period, zero where nothing was spent."""
    return time_series(report.period.since, report.period.until, "day", dict(report.daily))


def report_dict(report: CostReport) -> dict[str, Any]:
    scope = report.scope
    return {
        "period": report.period.label,
        "since": report.period.since.isoformat(),
        "until": report.period.until.isoformat(),
        "scope": {
            k: sorted(v)
            for k, v in (("namespaces", scope.namespaces), ("teams", scope.teams), ("keys", scope.keys))
        },
        "requests": report.requests,
        "total_usd": usd(report.cost_nanos),
        "previous_total_usd": usd(report.previous_cost_nanos),
        "change_usd": usd(report.change_nanos),
        "change_percent": change_percent(report),
        "input_tokens": report.input_tokens,
        "output_tokens": report.output_tokens,
        "top": {
            name: [{"name": s.name, "requests": s.requests, "cost_usd": usd(s.cost_nanos)} for s in spends]
            for name, spends in report.top.items()
        },
        "most_expensive": [
            {
                "id": r.id,
                "time": r.time,
                "namespace": r.namespace,
                "key": r.key_name,
                "model": r.model,
                "provider": r.provider,
                "cost_usd": usd(r.cost_nanos),
            }
            for r in report.expensive
        ],
        "cache": {"hits": report.cache_hits, "saved_usd": usd(report.cache_saved_nanos)},
        "providers": [
            {"provider": p.provider, "requests": p.requests, "errors": p.errors, "fallbacks": p.fallbacks}
            for p in report.providers
        ],
        "p95_latency_ms": report.p95_latency_ms,
        "p95_ttft_ms": report.p95_ttft_ms,
        "anomalies": [
            {
                "dimension": a.dimension,
                "name": a.name,
                "cost_usd": usd(a.cost_nanos),
                "baseline_usd": usd(a.baseline_nanos),
            }
            for a in report.anomalies
        ],
        "unpriced_calls": report.unpriced,
        "budgets": [
            {
                "budget": f.id,
                "period": f.period,
                "limit_usd": usd(f.limit_nanos),
                "spent_usd": usd(f.spent_nanos),
                "forecast_usd": None if f.forecast_nanos is None else usd(f.forecast_nanos),
                "runs_out": None if f.runs_out is None else f.runs_out.isoformat(),
                "reached": f.reached,
            }
            for f in report.forecasts
        ],
    }


def render_json(report: CostReport) -> str:
    return json.dumps(report_dict(report), indent=2) + "\n"


def render_csv(report: CostReport) -> str:
    """One row per (namespace, key, team, route, model, provider), then a `total` row."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(
        ["kind", "period", *LINE_COLUMNS, "requests", "input_tokens", "output_tokens", "cost_usd"]
    )
    for line in report.lines:
        writer.writerow(
            [
                "line",
                report.period.label,
                *(line.keys[c] for c in LINE_COLUMNS),
                line.requests,
                line.input_tokens,
                line.output_tokens,
                usd(line.cost_nanos),
            ]
        )
    blanks = [""] * len(LINE_COLUMNS)
    writer.writerow(
        [
            "total",
            report.period.label,
            *blanks,
            report.requests,
            report.input_tokens,
            report.output_tokens,
            usd(report.cost_nanos),
        ]
    )
    return out.getvalue()


def _table(headers: list[str], rows: list[list[str]]) -> list[str]:
    widths = [max([len(h), *(len(r[i]) for r in rows)]) for i, h in enumerate(headers)]

    def line(cells: list[str]) -> str:
        return "  ".join(
            c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths, strict=True))
        )

    return [line(headers), line(["-" * w for w in widths]), *(line(r) for r in rows)]


def render_text(report: CostReport) -> str:
    body = report_dict(report)
    out = [
        f"Cost report {report.period.label} ({body['since']} to {body['until']})",
        f"Total {body['total_usd']} USD over {report.requests} requests; previous period "
        f"{body['previous_total_usd']} USD, change {body['change_usd']} USD ({body['change_percent']})",
        f"Cache: {report.cache_hits} hits saved {body['cache']['saved_usd']} USD. Unpriced calls: "
        f"{report.unpriced}. p95 latency: {report.p95_latency_ms} ms, p95 TTFT: {report.p95_ttft_ms} ms",
    ]
    for name, spends in body["top"].items():
        out += [
            "",
            f"Top {name}s",
            *_table(
                [name, "requests", "cost_usd"],
                [[s["name"] or "-", str(s["requests"]), s["cost_usd"]] for s in spends],
            ),
        ]
    out += [
        "",
        "Most expensive requests",
        *_table(
            ["id", "key", "model", "cost_usd"],
            [[r["id"], r["key"], r["model"], r["cost_usd"]] for r in body["most_expensive"]],
        ),
    ]
    out += [
        "",
        "Providers",
        *_table(
            ["provider", "requests", "errors", "fallbacks"],
            [
                [p["provider"] or "-", str(p["requests"]), str(p["errors"]), str(p["fallbacks"])]
                for p in body["providers"]
            ],
        ),
    ]
    if body["anomalies"]:
        out += [
            "",
            "Anomalies (more than 2x the average of the 3 periods before)",
            *_table(
                ["name", "cost_usd", "baseline_usd"],
                [
                    [f"{a['dimension']} {a['name']}", a["cost_usd"], a["baseline_usd"]]
                    for a in body["anomalies"]
                ],
            ),
        ]
    if body["budgets"]:
        out += [
            "",
            "Budgets (current period)",
            *_table(
                ["budget", "limit_usd", "spent_usd", "forecast_usd"],
                [
                    [b["budget"], b["limit_usd"], b["spent_usd"], b["forecast_usd"] or "-"]
                    for b in body["budgets"]
                ],
            ),
        ]
    return "\n".join(out) + "\n"


_HTML = jinja2.Environment(autoescape=True, undefined=jinja2.StrictUndefined).from_string(
    """<!doctype html>
<html><head><meta charset="utf-8"><title>Tollway cost report {{ r.period }}</title></head>
<body style="font-family: sans-serif">
<h1>Cost report {{ r.period }}</h1>
<p>Total <b>{{ r.total_usd }} USD</b> over {{ r.requests }} requests; previous period
{{ r.previous_total_usd }} USD (change {{ r.change_usd }} USD, {{ r.change_percent }}).</p>
<p>Cache hits {{ r.cache.hits }} saved {{ r.cache.saved_usd }} USD. Unpriced calls {{ r.unpriced_calls }}.
p95 latency {{ r.p95_latency_ms }} ms, p95 TTFT {{ r.p95_ttft_ms }} ms.</p>
{% if image %}<img src="{{ image.src }}" width="{{ image.width }}" height="{{ image.height }}"
 alt="Spend per day, {{ r.total_usd }} USD in all">
{% else %}<svg xmlns="http://www.w3.org/2000/svg" width="{{ chart.width }}" height="{{ chart.height }}"
 role="img" aria-label="Spend per day">
{% for bar in chart.bars %}<rect x="{{ bar.x }}" y="{{ bar.y }}" width="{{ bar.width }}"
 height="{{ bar.height }}" fill="#3b6ea5">
<title>{{ bar.label }}: {{ usd(bar.value_nanos) }} USD</title></rect>
{% endfor %}</svg>{% endif %}
{% for name, spends in r.top.items() %}
<h2>Top {{ name }}s</h2>
<table><tr><th>{{ name }}</th><th>requests</th><th>cost USD</th></tr>
{% for s in spends %}<tr><td>{{ s.name }}</td><td>{{ s.requests }}</td><td>{{ s.cost_usd }}</td></tr>
{% endfor %}</table>
{% endfor %}
<h2>Most expensive requests</h2>
<table><tr><th>id</th><th>key</th><th>model</th><th>cost USD</th></tr>
{% for q in r.most_expensive %}<tr><td>{{ q.id }}</td><td>{{ q.key }}</td><td>{{ q.model }}</td>
<td>{{ q.cost_usd }}</td></tr>{% endfor %}</table>
<h2>Providers</h2>
<table><tr><th>provider</th><th>requests</th><th>errors</th><th>fallbacks</th></tr>
{% for p in r.providers %}<tr><td>{{ p.provider }}</td><td>{{ p.requests }}</td><td>{{ p.errors }}</td>
<td>{{ p.fallbacks }}</td></tr>{% endfor %}</table>
{% if r.anomalies %}<h2>Anomalies</h2><ul>{% for a in r.anomalies %}<li>{{ a.dimension }} {{ a.name }}:
{{ a.cost_usd }} USD (baseline {{ a.baseline_usd }} USD)</li>{% endfor %}</ul>{% endif %}
{% if r.budgets %}<h2>Budgets</h2><table><tr><th>budget</th><th>limit USD</th><th>spent USD</th>
<th>forecast USD</th></tr>{% for b in r.budgets %}<tr><td>{{ b.budget }}</td><td>{{ b.limit_usd }}</td>
<td>{{ b.spent_usd }}</td><td>{{ b.forecast_usd or "-" }}</td></tr>{% endfor %}</table>{% endif %}
</body></html>
"""
)


@dataclass(frozen=True)
class ChartImage:
    """The chart as an image the page refers to (the e-mail's `cid:` PNG) instead of inline SVG."""

    src: str
    width: int
    height: int


def render_html(report: CostReport, image: ChartImage | None = None) -> str:
    return _HTML.render(
        r=report_dict(report),
        chart=bar_chart(daily_series(report)),
        image=image,
        usd=usd,
    )


def render(report: CostReport, fmt: str) -> str:
    renderers = {"text": render_text, "json": render_json, "html": render_html, "csv": render_csv}
    if fmt not in renderers:
        raise ValueError(f"format: expected one of {', '.join(FORMATS)}, got {fmt!r}")
    return renderers[fmt](report)
