"""The cost report's spend per day as a PNG, for the e-mail: the HTML page's SVG chart (the same
series and the console's bar geometry) drawn with Pillow, because Gmail and Outlook do not draw
inline SVG.

The same report gives the same bytes (no timestamp in the file, a fixed font): a re-sent e-mail
carries the same image. Bar heights are pixels; every amount written on the chart is exact.
"""

from __future__ import annotations

import io
import math

from PIL import Image, ImageDraw, ImageFont

from tollway_meter.console.chart import BarChart, bar_chart
from tollway_meter.report import CostReport
from tollway_meter.report_render import daily_series, usd

# About 600 pixels wide: the width mail clients lay a message out in.
PLOT_WIDTH = 560
PLOT_HEIGHT = 160
MARGIN = 20
TOP = 34  # the title line above the bars
BOTTOM = 26  # the day labels below them
WIDTH = PLOT_WIDTH + 2 * MARGIN
HEIGHT = TOP + PLOT_HEIGHT + BOTTOM
BAR = (0x3B, 0x6E, 0xA5)  # the SVG chart's fill
BACKGROUND = (0xFF, 0xFF, 0xFF)
INK = (0x33, 0x33, 0x33)
AXIS = (0x99, 0x99, 0x99)
LABEL_SPACE = 44  # pixels a day label needs; narrower bars label every few days


def chart_geometry(report: CostReport) -> BarChart:
    return bar_chart(daily_series(report), PLOT_WIDTH, PLOT_HEIGHT)


def render_png(report: CostReport) -> bytes:
    chart = chart_geometry(report)
    image = Image.new("RGB", (WIDTH, HEIGHT), BACKGROUND)
    draw = ImageDraw.Draw(image)
    font = ImageFont.load_default(size=12)
    draw.text((MARGIN, 8), f"Spend per day, USD ({report.period.label})", fill=INK, font=font)
    if chart.bars:
        draw.text(
            (WIDTH - MARGIN, 8), f"highest day {usd(chart.max_nanos)}", fill=INK, font=font, anchor="ra"
        )
    for bar in chart.bars:
        # A rectangle's corners are inclusive in Pillow: the last pixel is x + width - 1.
        if bar.height > 0:
            left, top = MARGIN + bar.x, TOP + bar.y
            draw.rectangle((left, top, left + bar.width - 1, top + bar.height - 1), fill=BAR)
    baseline = TOP + PLOT_HEIGHT
    draw.line((MARGIN, baseline, MARGIN + PLOT_WIDTH - 1, baseline), fill=AXIS)
    if chart.bars:
        every = max(1, math.ceil(LABEL_SPACE / (chart.width // len(chart.bars))))
        for index, bar in enumerate(chart.bars):
            if index % every == 0:
                centre = MARGIN + bar.x + bar.width // 2
                draw.text((centre, baseline + 6), bar.label[5:], fill=INK, font=font, anchor="ma")
    out = io.BytesIO()
    image.save(out, format="PNG")
    return out.getvalue()
