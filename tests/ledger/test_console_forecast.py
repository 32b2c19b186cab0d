"""Budgets on the overview: limits from a compiled GatewayConfig, spend in the current period from
the ledger, the linear forecast and the run-out date, all exact (nano-USD, microseconds)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from click.testing import CliRunner
from console_html import body_rows, read_page
from ledger_events import make_event

from tollway.cli import main
from tollway_meter.console import mount
from tollway_meter.console.access import Access
from tollway_meter.console.forecast import BadBudgets, BudgetFile, Limit, forecast, load_limits
from tollway_meter.console.pages import usd
from tollway_meter.ledger import Ledger
from tollway_sidecar.config.models import Budget, GatewayConfig

USD = 10**9
NOV = datetime(2026, 11, 1, tzinfo=UTC)  # November 2026: 30 days, starts on a Sunday
MONTHLY = Limit("team-a/monthly", "team-a", 20 * USD, "Monthly")


def test_a_linear_forecast_and_the_day_it_runs_out() -> None:
    now = NOV + timedelta(days=10)
    f = forecast(MONTHLY, 10 * USD, now)
    assert (f.start, f.end) == (NOV, datetime(2026, 12, 1, tzinfo=UTC))
    assert f.forecast_nanos == 30 * USD  # $10 in 10 of 30 days
    assert f.runs_out == NOV + timedelta(days=20)  # $20 at $1 a day
    assert not f.reached


def test_the_forecast_rounds_down_to_the_nano_dollar_and_the_run_out_up_to_the_microsecond() -> None:
    now = NOV + timedelta(microseconds=3)
    f = forecast(Limit("a/b", "a", 10_000, "Monthly"), 7, now)
    month = 30 * 24 * 3600 * 10**6
    assert f.forecast_nanos == 7 * month // 3 == 6_048_000_000_000
    assert f.runs_out == NOV + timedelta(microseconds=4286)  # 3 * 10000 / 7 = 4285.71…


def test_no_run_out_when_the_projection_stays_under_or_just_reaches_the_limit() -> None:
    now = NOV + timedelta(days=10)
    assert forecast(MONTHLY, 5 * USD, now).runs_out is None  # $15 by the end
    exactly = forecast(MONTHLY, USD * 20 // 3, now)  # $20 at the period's very end, not before it
    assert exactly.forecast_nanos == 19_999_999_998
    assert exactly.runs_out is None
    assert forecast(MONTHLY, 0, now).forecast_nanos == 0


def test_a_spent_budget_is_reached() -> None:
    f = forecast(MONTHLY, 20 * USD, NOV + timedelta(days=3))
    assert f.reached and f.runs_out is None and f.forecast_nanos == 200 * USD


def test_weekly_daily_total_and_per_user_budgets() -> None:
    wednesday_noon = datetime(2026, 11, 11, 12, tzinfo=UTC)  # 2.5 days into the week from Monday 9th
    weekly = forecast(Limit("a/w", "a", 10 * USD, "Weekly"), 5 * USD, wednesday_noon)
    assert weekly.start == datetime(2026, 11, 9, tzinfo=UTC)
    assert weekly.forecast_nanos == 14 * USD
    assert weekly.runs_out == datetime(2026, 11, 14, tzinfo=UTC)  # 2.5 days * 10 / 5
    daily = forecast(Limit("a/d", "a", 4 * USD, "Daily"), 3 * USD, wednesday_noon)
    assert daily.forecast_nanos == 6 * USD and daily.runs_out == datetime(2026, 11, 11, 16, tzinfo=UTC)
    total = forecast(Limit("a/t", "a", 4 * USD, "Total"), 3 * USD, wednesday_noon)
    assert total.end is None and total.forecast_nanos is None and total.runs_out is None
    per_user = forecast(Limit("a/u", "a", USD, "Monthly", per_user=True), 50 * USD, wednesday_noon)
    assert per_user.forecast_nanos is None and not per_user.reached  # its limit is each user's
    at_start = forecast(MONTHLY, 0, NOV)
    assert at_start.forecast_nanos is None


def gateway_config(path: Path, *budgets: Budget) -> Path:
    path.write_text(GatewayConfig(budgets=budgets).model_dump_json(indent=2))
    return path


def test_limits_come_from_a_compiled_gateway_config(tmp_path: Path) -> None:
    path = gateway_config(
        tmp_path / "config.json",
        Budget(name="monthly", namespace="team-a", limit_usd=Decimal("20.000000001")),
        Budget(name="weekly", namespace="team-b", limit_usd=Decimal("5"), period="Weekly", per_user=True),
    )
    assert load_limits(path) == {
        "team-a/monthly": Limit("team-a/monthly", "team-a", 20_000_000_001, "Monthly"),
        "team-b/weekly": Limit("team-b/weekly", "team-b", 5 * USD, "Weekly", per_user=True),
    }


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("{", "not a readable JSON"),
        ('{"keys": []}', "`budgets` list"),
        ('{"budgets": [{"name": "x", "namespace": "a", "limit_usd": "abc"}]}', "not a decimal"),
        ('{"budgets": [{"name": "x", "namespace": "a", "limit_usd": "0"}]}', "more than 0"),
        ('{"budgets": [{"name": "x", "namespace": "a", "limit_usd": "0.0000000001"}]}', "nano-dollar"),
        ('{"budgets": [{"name": "x", "namespace": "a", "limit_usd": "1", "period": "Hourly"}]}', "period"),
        ('{"budgets": [{"namespace": "a", "limit_usd": "1"}]}', "name and a namespace"),
    ],
)
def test_a_bad_budgets_file_is_refused_naming_the_field(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "config.json"
    path.write_text(text)
    with pytest.raises(BadBudgets, match=message):
        load_limits(path)
    result = CliRunner().invoke(main, ["console", "--db", "sqlite:///:memory:", "--budgets-from", str(path)])
    assert result.exit_code == 2 and message in result.output, result.output


def test_budgets_from_kubernetes_needs_kubernetes_auth() -> None:
    result = CliRunner().invoke(
        main, ["console", "--db", "sqlite:///:memory:", "--budgets-from", "kubernetes"]
    )
    assert result.exit_code == 2 and "--auth kubernetes" in result.output, result.output


def test_the_budgets_file_is_re_read_when_it_changes(tmp_path: Path) -> None:
    path = gateway_config(tmp_path / "c.json", Budget(name="m", namespace="a", limit_usd=Decimal("1")))
    budgets = BudgetFile(path)
    assert budgets.read()["a/m"].limit_nanos == USD
    gateway_config(path, Budget(name="m", namespace="a", limit_usd=Decimal("12.5")))
    assert budgets.read()["a/m"].limit_nanos == 12_500_000_000


class Fixed:
    def __init__(self, access: Access) -> None:
        self.decision = access

    async def access(self, token: str | None, namespaces: Iterable[str]) -> Access:
        return self.decision

    async def close(self) -> None:
        return None


NOW = NOV + timedelta(days=10)


@pytest.fixture
async def overview(ledger: Ledger, tmp_path: Path) -> AsyncIterator[TestClient[web.Request, web.Application]]:
    events = [
        # This month, before now: counted. $1.25 + $2.50 + $0.000000001 = $3.750000001.
        make_event(at=NOV + timedelta(days=1), cost="1.25", budgets=("team-a/monthly",)),
        make_event(at=NOV + timedelta(days=5), cost="2.5", budgets=("team-a/monthly", "team-a/weekly")),
        make_event(at=NOV + timedelta(days=9, hours=23), cost="0.000000001", budgets=("team-a/monthly",)),
        # Last month and after now: not this period's spend so far.
        make_event(at=NOV - timedelta(hours=1), cost="100", budgets=("team-a/monthly",)),
        make_event(at=NOW + timedelta(hours=1), cost="100", budgets=("team-a/monthly",)),
        make_event(at=NOV + timedelta(days=2), cost="9", namespace="team-b", budgets=("team-b/monthly",)),
    ]
    ledger.ingest(events)
    path = gateway_config(
        tmp_path / "config.json",
        Budget(name="monthly", namespace="team-a", limit_usd=Decimal("10")),
        Budget(name="weekly", namespace="team-a", limit_usd=Decimal("100"), period="Weekly"),
        Budget(name="monthly", namespace="team-b", limit_usd=Decimal("10")),
    )
    app = web.Application()
    authorizer = Fixed(Access("alice", frozenset({"team-a"}), frozenset()))
    mount(app, ledger, clock=lambda: NOW, authorizer=authorizer, budgets=BudgetFile(path))
    async with TestClient(TestServer(app)) as client:
        yield client


async def test_the_overview_shows_limit_spend_forecast_and_run_out(
    overview: TestClient[web.Request, web.Application],
) -> None:
    answer = await overview.get("/console/?since=30d", headers={"Authorization": "Bearer t"})
    assert answer.status == 200
    rows = {row[0]: row[1:] for row in body_rows(read_page(await answer.text()).tables["forecasts"])}
    spent = 3_750_000_001
    month = forecast(Limit("team-a/monthly", "team-a", 10 * USD, "Monthly"), spent, NOW)
    assert month.forecast_nanos == spent * 30 // 10 == 11_250_000_003
    # 10 days * $10 / $3.750000001 = 2,303,999,999,385.6 µs, rounded up.
    assert month.runs_out == NOV + timedelta(microseconds=2_303_999_999_386)
    assert rows["team-a/monthly"] == [
        "Monthly",
        usd(10 * USD),
        "$3.750000001",
        "$11.250000003",
        "2026-11-27 15:59:59 UTC",
    ]
    # The week began on Monday 9 November: the $2.50 of the 6th is last week's.
    assert rows["team-a/weekly"] == ["Weekly", usd(100 * USD), usd(0), usd(0), "-"]
    assert "team-b/monthly" not in rows  # another namespace's budget


async def test_without_a_budgets_file_the_overview_says_how_to_get_forecasts(ledger: Ledger) -> None:
    app = web.Application()
    mount(app, ledger, clock=lambda: NOW)
    async with TestClient(TestServer(app)) as client:
        html = await (await client.get("/console/")).text()
    assert "no-limits" in read_page(html).texts and "--budgets-from" in html


def test_tollway_devs_console_hint_passes_the_compiled_config(tmp_path: Path) -> None:
    from tollway.dev import DevGateway, DevOptions, usage_lines

    gateway = DevGateway(DevOptions(config_dir=tmp_path, redis_url="redis://x", state_dir=tmp_path / "s"))
    hint = usage_lines(gateway)[2]
    assert f"--budgets-from {gateway.config_file}" in hint
    # The file it names is one the console reads (the sidecar's compiled GatewayConfig).
    gateway.config_file.parent.mkdir(parents=True, exist_ok=True)
    gateway_config(gateway.config_file, Budget(name="m", namespace="a", limit_usd=Decimal("3")))
    assert BudgetFile(gateway.config_file).read()["a/m"].limit_nanos == 3 * USD
    remote = DevGateway(DevOptions(config_dir=tmp_path, redis_url="redis://x", config_secret="ns/s"))
    assert "--budgets-from" not in usage_lines(remote)[2]  # nothing compiled locally to read
