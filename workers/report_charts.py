"""A report's chart as a reportlab.graphics `Drawing` (a platypus flowable): a vertical bar
chart or a line chart over the categories, one colour per series, with a legend below.

reportlab's chart labels are plain strings in one font, so a chart is drawn in the first face
that has every character of its labels (`Fonts.covering`); there is no per-character fallback
and no shaping inside a chart. Loaded in worker processes only.
"""
from __future__ import annotations

from reportlab.graphics.charts.barcharts import VerticalBarChart
from reportlab.graphics.charts.legends import Legend
from reportlab.graphics.charts.linecharts import HorizontalLineChart
from reportlab.graphics.shapes import Drawing, String
from reportlab.graphics.widgets.markers import makeMarker
from reportlab.lib import colors

from offload.workers.errors import PermanentError
from offload.workers.invoice_text import Fonts
from offload.workers.report_data import Chart

#: The series' colours, in order (a 13th series starts again).
PALETTE = tuple(colors.HexColor(c) for c in (
    "#1f4e79", "#e07b39", "#3a9d5d", "#c0392b", "#8e6bbf", "#8c564b",
    "#d35fb7", "#7f7f7f", "#b5b82e", "#17becf", "#2e4057", "#f2a900"))
PLOT_HEIGHT = 170.0
TITLE_SIZE, LABEL_SIZE = 11.0, 8.0
#: Beyond this many categories the axis labels are tilted; beyond `SPARSE`, only every k-th is shown.
TILT, SPARSE = 8, 30
LEGEND_ROW = 14.0


class MissingChartFont(PermanentError):
    def __init__(self, field: str) -> None:
        super().__init__(f"{field}: no configured font has every character of the chart's title, categories "
                         "and series names (a chart's labels are drawn in one font)", type="MissingGlyph")
        self.field = field


def chart_drawing(chart: Chart, width: float, fonts: Fonts, field: str) -> Drawing:
    """The drawing of `chart`, `width` points wide. `field` names the chart in an error."""
    labels = [chart.title or "", *chart.categories, *(s.name for s in chart.series)]
    font = fonts.covering(labels)
    if font is None:
        raise MissingChartFont(field)
    per_row = max(1, int(width // 140))
    legend_rows = -(-len(chart.series) // per_row)
    tilted = len(chart.categories) > TILT
    axis_room = 46.0 if tilted else 18.0
    title_room = TITLE_SIZE + 10 if chart.title else 0.0
    height = title_room + PLOT_HEIGHT + axis_room + legend_rows * LEGEND_ROW + 8
    drawing = Drawing(width, height)
    plot = VerticalBarChart() if chart.kind == "bar" else HorizontalLineChart()
    plot.x, plot.y = 48, legend_rows * LEGEND_ROW + 8 + axis_room
    plot.width, plot.height = width - plot.x - 8, PLOT_HEIGHT
    plot.data = [list(series.values) for series in chart.series]
    step = -(-len(chart.categories) // SPARSE)
    plot.categoryAxis.categoryNames = [name if i % step == 0 else "" for i, name in enumerate(chart.categories)]
    axis = plot.categoryAxis.labels
    axis.fontName, axis.fontSize = font, LABEL_SIZE
    if tilted:
        axis.angle, axis.boxAnchor, axis.dx, axis.dy = 40, "ne", 0, -4
    values = plot.valueAxis
    values.labels.fontName, values.labels.fontSize = font, LABEL_SIZE
    values.labelTextFormat = _number
    values.visibleGrid, values.gridStrokeColor, values.gridStrokeWidth = 1, colors.HexColor("#dddddd"), 0.4
    if all(v is None for series in chart.series for v in series.values):
        values.valueMin, values.valueMax = 0, 1  # nothing to scale the axis on
    if chart.kind == "bar":
        values.forceZero = 1  # a bar's length is its value: the axis starts at 0
        plot.barSpacing, plot.groupSpacing = 1, 6
        for i in range(len(chart.series)):
            plot.bars[i].fillColor = PALETTE[i % len(PALETTE)]
            plot.bars[i].strokeColor = None
    else:
        for i in range(len(chart.series)):
            plot.lines[i].strokeColor = PALETTE[i % len(PALETTE)]
            plot.lines[i].strokeWidth = 1.5
            if len(chart.categories) <= 60:
                plot.lines[i].symbol = makeMarker("FilledCircle", size=3.5, fillColor=PALETTE[i % len(PALETTE)])
    drawing.add(plot)
    if chart.title:
        drawing.add(String(width / 2, height - TITLE_SIZE - 2, chart.title, fontName=font, fontSize=TITLE_SIZE,
                           textAnchor="middle"))
    drawing.add(_legend(chart, font, width, per_row))
    return drawing


def _legend(chart: Chart, font: str, width: float, per_row: int) -> Legend:
    legend = Legend()
    legend.fontName, legend.fontSize = font, LABEL_SIZE
    legend.alignment = "right"
    legend.x, legend.y = 48, (-(-len(chart.series) // per_row)) * LEGEND_ROW + 2
    legend.deltax, legend.deltay = (width - 56) / per_row, LEGEND_ROW
    legend.dxTextSpace, legend.dx, legend.dy = 4, 8, 8
    legend.boxAnchor = "nw"
    legend.subCols.minWidth = 0
    # one row of `per_row` entries after another: the legend fills columns first, so transpose
    legend.columnMaximum = -(-len(chart.series) // per_row)
    legend.colorNamePairs = [(PALETTE[i % len(PALETTE)], series.name) for i, series in enumerate(chart.series)]
    return legend


def _number(value: float) -> str:
    """An axis label: 1,250 or 0.25 or 3e+15, never 1250.0000001."""
    if abs(value) >= 1e12 or (value and abs(value) < 1e-4):
        return f"{value:.3g}"
    return f"{value:,.6g}" if value != int(value) else f"{int(value):,}"
