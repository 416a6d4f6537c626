"""Building blocks shared by the dashboards: the datasource, variables and panels.

Every panel and query points at the `datasource` template variable rather than at a
fixed datasource UID, so the same JSON imports into any Grafana whose Prometheus
datasource is called anything at all.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from itertools import count

from grafana_foundation_sdk.builders import common as common_builders
from grafana_foundation_sdk.builders import dashboard, prometheus, timeseries
from grafana_foundation_sdk.models import common
from grafana_foundation_sdk.models import dashboard as dashboard_models

# The name of the datasource variable, and the reference every panel carries.
DATASOURCE_VARIABLE = "datasource"
DATASOURCE = dashboard_models.DataSourceRef(
    type_val="prometheus", uid=f"${{{DATASOURCE_VARIABLE}}}"
)

# `rate()` windows follow Grafana's `$__rate_interval`, which stays at least four
# scrape intervals wide whatever the zoom, so rates never come out empty.
RATE_INTERVAL = "$__rate_interval"

# The percentiles every latency panel draws.
QUANTILES = (0.5, 0.9, 0.99)


def datasource_variable() -> dashboard.DatasourceVariable:
    """The dashboard variable that picks a Prometheus datasource."""
    return dashboard.DatasourceVariable(DATASOURCE_VARIABLE).label("Data source").type("prometheus")


def label_variable(name: str, label: str, query: str) -> dashboard.QueryVariable:
    """A multi-value variable filled from `label_values(...)`, "All" meaning any value.

    The "All" value is the regex `.*` rather than the list of values Grafana knows, so
    a model or pool that appears after the dashboard loaded is still shown.
    """
    return (
        dashboard.QueryVariable(name)
        .label(label)
        .datasource(DATASOURCE)
        .query(query)
        .refresh(dashboard_models.VariableRefresh.ON_TIME_RANGE_CHANGED)
        .sort(dashboard_models.VariableSort.ALPHABETICAL_ASC)
        .multi(True)
        .include_all(True)
        .all_value(".*")
    )


def query(expr: str, legend: str, ref_id: str) -> prometheus.Dataquery:
    """One PromQL target of a panel."""
    return prometheus.Dataquery().expr(expr).legend_format(legend).ref_id(ref_id).range()


def quantile_queries(
    histogram: str, selector: str, by: Sequence[str]
) -> list[prometheus.Dataquery]:
    """p50, p90 and p99 of a Prometheus histogram, one target each, grouped by `by`."""
    group = ", ".join(["le", *by])
    legend = "/".join(f"{{{{{label}}}}}" for label in by)
    return [
        query(
            f"histogram_quantile({q}, sum by ({group}) "
            f"(rate({histogram}_bucket{selector}[{RATE_INTERVAL}])))",
            legend=f"p{round(q * 100)} {legend}".rstrip(),
            ref_id=f"p{round(q * 100)}",
        )
        for q in QUANTILES
    ]


class PanelIds:
    """Hands out the panel ids of one dashboard: unique, stable, in layout order.

    Grafana needs unique ids for panel links and "view panel"; numbering them in
    the order the code adds them keeps the committed JSON stable between runs.
    """

    def __init__(self) -> None:
        self._ids: Iterator[int] = count(1)

    def row(self, title: str) -> dashboard.Row:
        """A full-width row header."""
        return dashboard.Row(title).id(next(self._ids))

    def timeseries(
        self,
        title: str,
        description: str,
        targets: Sequence[prometheus.Dataquery],
        *,
        unit: str,
        width: int = 8,
        stacked: bool = False,
    ) -> timeseries.Panel:
        """A time-series panel with a table legend that shows the last and max values."""
        panel = (
            timeseries.Panel()
            .id(next(self._ids))
            .title(title)
            .description(description)
            .datasource(DATASOURCE)
            .targets(list(targets))
            .unit(unit)
            .min(0)
            .height(8)
            .span(width)
            .fill_opacity(10)
            .legend(
                common_builders.VizLegendOptions()
                .display_mode(common.LegendDisplayMode.TABLE)
                .placement(common.LegendPlacement.BOTTOM)
                .show_legend(True)
                .calcs(["lastNotNull", "max"])
            )
            .tooltip(
                common_builders.VizTooltipOptions()
                .mode(common.TooltipDisplayMode.MULTI)
                .sort(common.SortOrder.DESCENDING)
            )
        )
        if stacked:
            panel = panel.stacking(
                common_builders.StackingConfig().mode(common.StackingMode.NORMAL)
            )
        return panel
