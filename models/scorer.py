"""Demand scorers: predict each item's units over the next windows from feature rows.

``TrendScorer`` is the fallback used when no trained model is configured: it
returns the River trend model's forecast (or, for a series too short to have
one, nothing: the decisions then do not judge stock). The trained PyTorch
scorer lives beside it.
"""
from __future__ import annotations

from .itemstate import ClosedWindow

HORIZON = 3


class TrendScorer:
    version = "trend-v1"
    device = "cpu"

    def predict(self, rows: list[list[float]], windows: list[ClosedWindow]) -> list[list[float] | None]:
        return [cw.state.trend.forecast(HORIZON) for cw in windows]
