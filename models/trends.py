"""Incremental per-series trend model for closed event-time windows.

One :class:`TrendModel` per series (product, category, ...).  The stream layer
calls :meth:`TrendModel.learn_one` once per *closed* window with that window's
value (units ordered, views, ...), and reads :meth:`TrendModel.forecast`,
:meth:`TrendModel.slope` and :meth:`TrendModel.burst`.

Method (chosen by measurement, see ``docs/benchmarks.md`` (trends))
------------------------------------------------------------
A small pool of hand-written incremental exponential-smoothing recursions,
ETS(A,Ad,A) in error-correction form, run side by side::

    e   = y - (l + phi*b + s[j])          # one-step error, j = t mod m
    l  <- l + phi*b + alpha*e
    b  <- phi*b + beta*e
    s[j] <- s[j] + gamma*e

Half of the pool works on ``y`` itself, half on ``log(y + c)`` (``c`` a fixed
offset set at initialisation), which is how multiplicative seasonality is
approximated without dividing by a possibly-zero level.  Every candidate is
scored by an exponentially discounted mean absolute one-step error *in the
original units*; the forecast is the inverse-error-weighted mean of the
``top_k`` best candidates (``top_k=1`` is plain selection).  All state is
plain floats and lists, so :meth:`TrendModel.to_state` is a JSON-ready dict.

Bursts are a two-sided CUSUM on the standardised one-step residual of the
served forecast (scale: discounted, winsorised mean absolute residual), with a
per-window clip and a two-window confirmation so that a lone outlier rarely
fires.  Once the detector is armed, learning is robust: each window is
winsorised to forecast +/- 3 residual sd, except the window on which the
detector fires.

River's ``time_series.HoltWinters`` (additive / multiplicative, fixed
parameters) and ``SNARIMAX`` were measured as alternatives in
``bench/trend_eval.py``: additive HW and SNARIMAX were clearly worse,
multiplicative HW about as accurate but with hand-picked parameters, no zeros
allowed, and state held in River objects rather than plain numbers.

>>> m = TrendModel(season_length=0, horizon=2)
>>> m.forecast() is None          # untrained: honest None, never a zero
True
>>> for y in [10, 11, 12, 13, 14, 15, 16, 17]:
...     m.learn_one(y)
>>> [round(v) for v in m.forecast()]
[18, 19]
>>> m.slope() > 0.5
True
>>> m2 = TrendModel.from_state(m.to_state())
>>> m2.forecast() == m.forecast()
True
"""

from __future__ import annotations

import copy
import json
import math
from array import array

import orjson

__all__ = ["TrendModel", "model_state", "summarise", "STATE_VERSION"]

STATE_VERSION = 2  # 2: parameters at their defaults are left out of the state (1 still loads)

# (alpha, beta, gamma, phi) grid shared by the raw and the log halves of the pool.
DEFAULT_GRID: tuple[tuple[float, float, float, float], ...] = (
    (0.1, 0.0, 0.05, 0.9),
    (0.1, 0.01, 0.05, 0.98),
    (0.3, 0.0, 0.1, 0.9),
    (0.3, 0.03, 0.1, 0.98),
    (0.3, 0.03, 0.3, 0.9),
    (0.6, 0.0, 0.1, 0.9),
    (0.6, 0.06, 0.2, 0.98),
    (0.9, 0.0, 0.1, 0.8),
)

_RAW, _LOG = 0, 1


def _mean(xs):
    return sum(xs) / len(xs)


_FLOAT_GRIDS: dict[tuple, list] = {}  # a grid -> its float rows, shared (never mutated)


def _float_grid(grid) -> list:
    """The grid as a list of float tuples, one shared list per distinct grid (a model whose grid is
    the default's list is known to have it without a comparison: see _state_params). Every new item
    builds a model, and converting the default grid cost about 20 us of it."""
    rows = _FLOAT_GRIDS.get(grid) if type(grid) is tuple else None
    if rows is None:
        key = tuple(tuple(float(v) for v in g) for g in grid)
        rows = _FLOAT_GRIDS.get(key)
        if rows is None:
            rows = list(key)
            if len(_FLOAT_GRIDS) < 256:  # a few constant grids in practice; never grows without bound
                _FLOAT_GRIDS[key] = rows
        if type(grid) is tuple and len(_FLOAT_GRIDS) < 256:
            _FLOAT_GRIDS[grid] = rows
    return rows


# Parameter defaults (min_history's depends on the season length); a state leaves these out.
PARAM_DEFAULTS = {"use_log": True, "top_k": 3, "err_decay": 0.9, "cusum_k": 0.75, "cusum_h": 5.0,
                  "burst_warmup": 6, "burst_hold": 1, "scale_decay": 0.95, "cusum_clip": 5.0, "robust_clip": 3.0,
                  "min_run": 2, "confirm_z": 1.5, "relevel_on_burst": False}


class TrendModel:
    """Online damped-trend (seasonal) exponential smoothing with burst detection.

    Parameters
    ----------
    season_length
        Windows per season (e.g. 7 for daily windows with a weekly cycle, 12
        for monthly data); 0 or 1 means no seasonality.
    horizon
        Default number of windows ahead returned by :meth:`forecast`.
    grid
        List of ``(alpha, beta, gamma, phi)`` candidates (see module doc).
    use_log
        Also run the grid on ``log(y + c)`` (only for non-negative series).
    top_k
        Forecast with the inverse-error-weighted mean of the ``top_k`` best
        candidates (1 = pure selection).
    err_decay
        Discount of the running absolute error used for selection.
    min_history
        Own windows before the model is trusted (``is_provisional`` False) and,
        for models not built :meth:`from_prior`, before any forecast is given.
        Default ``2*season_length`` (3 when not seasonal).
    cusum_k, cusum_h, cusum_clip
        CUSUM allowance, threshold and per-window clip of the standardised
        residual (a single window can add at most ``cusum_clip - cusum_k``,
        so one isolated outlier does not fire; a sustained shift does).
    min_run, confirm_z
        The CUSUM only fires when the last ``min_run`` windows all deviated
        by more than ``confirm_z`` residual sd in the alarm's direction: a
        level shift, not a lone outlier on top of accumulated noise.
    robust_clip
        Once the detector is armed, each window is winsorised to the served
        forecast +/- ``robust_clip`` residual sd before learning (0 = off);
        the window on which the detector fires is learnt unwinsorised.
    relevel_on_burst
        If True, a firing detector also resets every candidate's level to the
        current window (faster after true shifts, but it cost accuracy on the
        real series in the benchmark, so it is off by default).
    burst_warmup
        Residuals needed to estimate their scale before a burst can fire.
    burst_hold
        ``burst()`` stays True for this many windows after an alarm.
    """

    def __init__(self, season_length: int = 0, horizon: int = 3, **params):
        self.season_length = int(season_length) if season_length and season_length > 1 else 0
        if horizon < 1:
            raise ValueError("horizon must be >= 1")
        self.horizon = int(horizon)
        grid = params.pop("grid", DEFAULT_GRID)
        self.grid = _float_grid(grid)
        d = PARAM_DEFAULTS
        self.use_log = bool(params.pop("use_log", d["use_log"]))
        self.top_k = int(params.pop("top_k", d["top_k"]))
        self.err_decay = float(params.pop("err_decay", d["err_decay"]))
        m = self.season_length
        self.min_history = int(params.pop("min_history", 2 * m if m else 3))
        self.cusum_k = float(params.pop("cusum_k", d["cusum_k"]))
        self.cusum_h = float(params.pop("cusum_h", d["cusum_h"]))
        self.burst_warmup = int(params.pop("burst_warmup", d["burst_warmup"]))
        self.burst_hold = int(params.pop("burst_hold", d["burst_hold"]))
        self.scale_decay = float(params.pop("scale_decay", d["scale_decay"]))
        self.cusum_clip = float(params.pop("cusum_clip", d["cusum_clip"]))
        self.robust_clip = float(params.pop("robust_clip", d["robust_clip"]))
        self.min_run = int(params.pop("min_run", d["min_run"]))
        self.confirm_z = float(params.pop("confirm_z", d["confirm_z"]))
        self.relevel_on_burst = bool(params.pop("relevel_on_burst", d["relevel_on_burst"]))
        if params:
            raise TypeError(f"unknown parameters: {sorted(params)}")
        self._reset_state()

    # ------------------------------------------------------------------ state
    def _reset_state(self):
        self._n = 0  # own windows learnt
        self._t = 0  # recursion clock (season index = t mod m)
        self._buffer: list[float] = []  # raw values until initialised
        self._ready = False
        self._offset = 0.0  # c in log(y + c)
        self._log_ok = False
        # Candidates, as flat arrays of doubles rather than a list each: copying a model (learning ahead
        # copies four an item at each live boundary) then copies a few arrays, not a few hundred float
        # objects scattered in memory. Candidate i: its kind, _lte[3i:3i+3] = level, trend, discounted
        # error, and _seas[i*m:(i+1)*m] its seasonals (m = season_length; none when 0).
        self._kinds: tuple = ()
        self._lte = array("d")
        self._seas = array("d")
        # burst detector
        self._scale = 0.0
        self._n_resid = 0
        self._gpos = 0.0
        self._gneg = 0.0
        self._run_pos = 0  # consecutive windows with z > confirm_z
        self._run_neg = 0
        self._since_alarm = -1  # windows since last alarm, -1 = never
        self._n_alarms = 0
        self._from_prior = False
        self._rescale_pending = False
        self._wcache = self._fcache = None  # derived, not state: top-k weights and forecasts until candidates change
        self._state_json = None  # derived: to_state() serialised, until the model learns again (state_json)

    def _params(self) -> dict:
        return {
            "grid": [list(g) for g in self.grid],
            "use_log": self.use_log,
            "top_k": self.top_k,
            "err_decay": self.err_decay,
            "min_history": self.min_history,
            "cusum_k": self.cusum_k,
            "cusum_h": self.cusum_h,
            "burst_warmup": self.burst_warmup,
            "burst_hold": self.burst_hold,
            "scale_decay": self.scale_decay,
            "cusum_clip": self.cusum_clip,
            "robust_clip": self.robust_clip,
            "min_run": self.min_run,
            "confirm_z": self.confirm_z,
            "relevel_on_burst": self.relevel_on_burst,
        }

    def _state_params(self) -> dict:
        """The parameters that differ from their defaults: every item's state holds up to four models,
        and their parameters, written out in full, were about a third of a trained model's bytes.
        Parameters never change after construction: worked out once per model (a copy from fresh()
        shares it)."""
        out = self.__dict__.get("_state_params_cache")
        if out is None:
            out = {k: v for k, v in self._params().items() if k in PARAM_DEFAULTS and v != PARAM_DEFAULTS[k]}
            m = self.season_length
            if self.min_history != (2 * m if m else 3):
                out["min_history"] = self.min_history
            if self.grid is not _float_grid(DEFAULT_GRID):
                out["grid"] = [list(g) for g in self.grid]
            self._state_params_cache = out
        return dict(out)

    def to_state(self) -> dict:
        """Plain, JSON-serialisable, versioned state (parameters at their defaults left out)."""
        return {
            "version": STATE_VERSION,
            "kind": "TrendModel",
            "season_length": self.season_length,
            "horizon": self.horizon,
            "params": self._state_params(),
            "n": self._n,
            "t": self._t,
            "buffer": list(self._buffer),
            "ready": self._ready,
            "offset": self._offset,
            "log_ok": self._log_ok,
            "cands": self._cand_lists(),
            "scale": self._scale,
            "n_resid": self._n_resid,
            "gpos": self._gpos,
            "gneg": self._gneg,
            "run_pos": self._run_pos,
            "run_neg": self._run_neg,
            "since_alarm": self._since_alarm,
            "n_alarms": self._n_alarms,
            "from_prior": self._from_prior,
            "rescale_pending": self._rescale_pending,
        }

    def state_json(self) -> bytes:
        """:meth:`to_state` serialised as JSON (orjson), kept until the model learns again.

        An item's models change only when its windows close, while a live worker rewrites the
        item's state at every flush it is dirty in (its counts change at every event): serialising
        the unchanged models again each time was a good part of the flush.

        >>> m = TrendModel()
        >>> m.learn_one(3.0); a = m.state_json(); a is m.state_json()
        True
        >>> m.learn_one(4.0); m.state_json() == orjson.dumps(m.to_state()) != a
        True
        """
        b = self._state_json
        if b is None:
            b = self._state_json = orjson.dumps(self.to_state())
        return b

    @classmethod
    def from_state(cls, d: dict) -> "TrendModel":
        if d.get("version") not in (1, STATE_VERSION):  # 1: every parameter written out
            raise ValueError(f"unsupported TrendModel state version: {d.get('version')!r}")
        m = cls(season_length=d["season_length"], horizon=d["horizon"], **d["params"])
        m._n = int(d["n"])
        m._t = int(d["t"])
        m._buffer = [float(v) for v in d["buffer"]]
        m._ready = bool(d["ready"])
        m._offset = float(d["offset"])
        m._log_ok = bool(d["log_ok"])
        m._set_cands([[int(c[0]), float(c[1]), float(c[2]), [float(v) for v in c[3]], float(c[4])] for c in d["cands"]])
        m._scale = float(d["scale"])
        m._n_resid = int(d["n_resid"])
        m._gpos = float(d["gpos"])
        m._gneg = float(d["gneg"])
        m._run_pos = int(d["run_pos"])
        m._run_neg = int(d["run_neg"])
        m._since_alarm = int(d["since_alarm"])
        m._n_alarms = int(d["n_alarms"])
        m._from_prior = bool(d["from_prior"])
        m._rescale_pending = bool(d["rescale_pending"])
        return m

    def fresh(self) -> "TrendModel":
        """An untrained model with the same parameters (a cold series' model is dropped for this)."""
        new = copy.copy(self)  # parameters are immutable values, shared; the state is reset below
        new._reset_state()
        return new

    def copy(self) -> "TrendModel":
        """An independent copy, state and all: what one learns leaves the other as it was.

        >>> a = TrendModel(); a.learn_one(3.0); b = a.copy(); b.learn_one(9.0)
        >>> a.n_seen, b.n_seen, a.copy().to_state() == a.to_state()
        (1, 2, True)
        """
        # Parameters, and derived values never changed in place, are shared. (Not copy.copy, which
        # goes through __reduce_ex__: a third of the cost, and items copy four models a window.)
        new = object.__new__(type(self))
        new.__dict__.update(self.__dict__)
        new._buffer = list(self._buffer)
        new._lte = self._lte[:]  # (the kinds are a tuple, shared)
        new._seas = self._seas[:]
        new._fcache = None if self._fcache is None else list(self._fcache)  # extended in place
        return new

    def to_json(self) -> str:
        return json.dumps(self.to_state(), separators=(",", ":"))

    def _cand_lists(self) -> list[list]:
        """The candidates as [kind, level, trend, seasonals, err] lists (their state form)."""
        lte, seas, m = self._lte, self._seas, self.season_length
        return [[k, lte[3 * i], lte[3 * i + 1], seas[i * m:(i + 1) * m].tolist(), lte[3 * i + 2]]
                for i, k in enumerate(self._kinds)]

    def _set_cands(self, cands: list) -> None:
        """Set the candidates from [kind, level, trend, seasonals, err] lists."""
        self._kinds = tuple(c[0] for c in cands)
        self._lte = array("d", [v for c in cands for v in (c[1], c[2], c[4])])
        self._seas = array("d", [v for c in cands for v in c[3]])

    # ----------------------------------------------------------- properties
    @property
    def n_seen(self) -> int:
        """Own windows learnt so far."""
        return self._n

    @property
    def seeded(self) -> bool:
        """True when the series started from other series' states (:meth:`from_prior`)."""
        return self._from_prior

    @property
    def is_provisional(self) -> bool:
        """True until the series has ``min_history`` windows of its own."""
        return self._n < self.min_history

    @property
    def method(self) -> str:
        m = self.season_length
        if not self._ready:
            return "untrained"
        best = self._ranked()[0]
        a, b, g, p = self.grid[best % len(self.grid)]
        tr = "log" if self._kinds[best] == _LOG else "raw"
        seas = f",A{m}" if m else ""
        return f"ETS(A,Ad{seas})[{tr}] alpha={a} beta={b} gamma={g} phi={p} top{self.top_k}"

    # ------------------------------------------------------------ transforms
    def _fwd(self, kind, y):
        if kind == _RAW:
            return y
        return math.log(max(y, 0.0) + self._offset)

    def _inv(self, kind, z):
        if kind == _RAW:
            return z
        return math.exp(min(z, 700.0)) - self._offset

    # -------------------------------------------------------- initialisation
    def _init_len(self) -> int:
        m = self.season_length
        return 2 * m if m else 3

    @staticmethod
    def _init_components(z: list[float], m: int):
        """Classical start values from the first 2m (or 3) points."""
        if m:
            a1, a2 = _mean(z[:m]), _mean(z[m : 2 * m])
            b0 = (a2 - a1) / m
            l0 = a1 - b0 * (m + 1) / 2.0  # level just before the first point
            s = [0.0] * m
            for i in range(m):
                s[i] = ((z[i] - (l0 + b0 * (i + 1))) + (z[i + m] - (l0 + b0 * (i + 1 + m)))) / 2.0
            sm = _mean(s)
            s = [v - sm for v in s]
            return l0, b0, s
        b0 = (z[2] - z[0]) / 2.0
        return z[0] - b0, b0, []

    def _initialise(self):
        buf = self._buffer
        m = self.season_length
        self._log_ok = self.use_log and min(buf) >= 0.0
        if self._log_ok:
            self._offset = max(1e-3, 0.1 * _mean([abs(v) for v in buf]))
        kinds = [_RAW] + ([_LOG] if self._log_ok else [])
        cands = []
        for kind in kinds:
            z = [self._fwd(kind, v) for v in buf]
            l0, b0, s0 = self._init_components(z, m)
            for _ in self.grid:
                cands.append([kind, l0, b0, list(s0), 0.0])
        self._set_cands(cands)
        self._ready = True
        self._t = 0
        # replay the initialisation window through the recursions (scores the
        # candidates; the burst detector does not see these residuals)
        for i, y in enumerate(buf):
            self._update_cands(y, first=(i == 0))
        self._buffer = []

    # -------------------------------------------------------------- internals
    def _cand_forecast(self, i, gi, h):
        """h-step forecast (h>=1) of candidate i in original units."""
        _, _, _, phi = self.grid[gi]
        lev, tr = self._lte[3 * i], self._lte[3 * i + 1]
        damp = phi * (1.0 - phi**h) / (1.0 - phi) if phi != 1.0 else float(h)
        z = lev + damp * tr
        m = self.season_length
        if m:
            z += self._seas[i * m + (self._t + h - 1) % m]
        return self._inv(self._kinds[i], z)

    def _update_cands(self, y: float, first: bool = False):
        # The hot path of the worker (once per item per closed window): transforms inlined.
        m = self.season_length
        j = self._t % m if m else 0
        lam = self.err_decay
        lam1 = 1.0 - lam
        grid = self.grid
        ng = len(grid)
        off = self._offset
        zlog = None
        exp, log = math.exp, math.log
        lte, seas = self._lte, self._seas
        for idx, kind in enumerate(self._kinds):
            alpha, beta, gamma, phi = grid[idx % ng]
            b = 3 * idx
            lev, tr, err = lte[b], lte[b + 1], lte[b + 2]
            s = seas[idx * m + j] if m else 0.0
            zhat = lev + phi * tr + s
            if kind == _RAW:
                yhat = zhat
                e = y - zhat
            else:
                yhat = exp(zhat if zhat < 700.0 else 700.0) - off
                if zlog is None:
                    zlog = log((y if y > 0.0 else 0.0) + off)
                e = zlog - zhat
            lte[b] = lev + phi * tr + alpha * e
            lte[b + 1] = phi * tr + beta * e
            if m:
                seas[idx * m + j] = s + gamma * e
            ae = abs(y - yhat)
            lte[b + 2] = ae if first and err == 0.0 else lam * err + lam1 * ae
        self._t += 1
        self._wcache = self._fcache = None

    def _ranked(self) -> list[int]:
        errs = self._lte[2::3].tolist()
        return sorted(range(len(errs)), key=errs.__getitem__)  # stable: ties keep candidate order

    def _weights(self) -> list[tuple[int, float]]:
        w = self._wcache
        if w is None:
            # Computed after every learnt window (learn_one's one-step forecast): kept lean, with the
            # same arithmetic in the same order as the plain form (the benchmarks check the signals).
            errs = self._lte[2::3].tolist()
            ranked = sorted(range(len(errs)), key=errs.__getitem__)  # stable: ties keep candidate order
            del ranked[max(1, self.top_k):]
            top = [errs[i] for i in ranked]
            floor = max(1e-12, 1e-6 * max(top))
            inv = [1.0 / (floor if floor > e else e) for e in top]  # max(e, floor), as max picks
            tot = sum(inv)
            w = self._wcache = [(i, wi / tot) for i, wi in zip(ranked, inv)]
        return w

    def _forecast_raw(self, h: int) -> list[float]:
        fc = self._fcache
        if fc is None or len(fc) < h:
            # Step k's forecast does not depend on h: computed once per step until the candidates change.
            ws = self._weights()
            grid = self.grid
            ng = len(grid)
            kinds, lte, seas = self._kinds, self._lte, self._seas
            m = self.season_length
            off = self._offset
            exp = math.exp
            have = 0 if fc is None else len(fc)
            fc = fc or []
            for k in range(have + 1, h + 1):
                # _cand_forecast inlined (the hot path of learn_one): the same expression per candidate.
                terms = []
                for i, w in ws:
                    lev, tr = lte[3 * i], lte[3 * i + 1]
                    phi = grid[i % ng][3]
                    damp = phi * (1.0 - phi**k) / (1.0 - phi) if phi != 1.0 else float(k)
                    z = lev + damp * tr
                    if m:
                        z += seas[i * m + (self._t + k - 1) % m]
                    terms.append(w * (z if kinds[i] == _RAW else exp(min(z, 700.0)) - off))
                fc.append(sum(terms))
            self._fcache = fc
        return fc[:h]

    # ------------------------------------------------------------------- API
    def learn_one(self, y: float) -> None:
        """Learn one closed window's value."""
        self._state_json = None
        y = float(y)
        if not math.isfinite(y):
            raise ValueError("window value must be finite")
        self._n += 1
        if self._since_alarm >= 0:
            self._since_alarm += 1
        if not self._ready:
            self._buffer.append(y)
            if len(self._buffer) >= self._init_len():
                self._initialise()
            return
        if self._rescale_pending:
            self._rescale_to(y)
            self._rescale_pending = False
        f1 = self._forecast_raw(1)[0]
        sigma = 1.25 * self._scale  # residual sd before this window
        armed = self._n_resid > self.burst_warmup
        if self._detect(y - f1):
            if self.relevel_on_burst:
                self._relevel(y)
            else:
                self._update_cands(y)  # learn the alarm window unwinsorised
            return
        c = self.robust_clip
        if armed and c > 0.0 and sigma > 0.0:
            # winsorise around the served forecast: one outlier cannot drag the
            # level (a sustained shift fires the detector and is then learnt in full)
            y = max(f1 - c * sigma, min(f1 + c * sigma, y))
        self._update_cands(y)

    def forecast(self, horizon: int | None = None) -> list[float] | None:
        """Point forecasts for the next ``horizon`` windows, or None when the
        model has too little history (and no prior)."""
        h = self.horizon if horizon is None else int(horizon)
        if h < 1:
            raise ValueError("horizon must be >= 1")
        if not self._ready:
            return None
        return self._forecast_raw(h)

    def predict_one(self, x: dict | None = None) -> float | None:
        """River-style alias: the one-step-ahead forecast (``x`` is ignored)."""
        f = self.forecast(1)
        return None if f is None else f[0]

    def slope(self) -> float | None:
        """Expected change per window of the de-seasonalised level (original
        units), or None when untrained."""
        if not self._ready:
            return None
        ng = len(self.grid)
        out = 0.0
        for i, w in self._weights():
            kind, lev, tr = self._kinds[i], self._lte[3 * i], self._lte[3 * i + 1]
            phi = self.grid[i % ng][3]
            if kind == _RAW:
                out += w * phi * tr
            else:
                out += w * (self._inv(kind, lev) + self._offset) * phi * tr
        return out

    def burst(self) -> bool:
        """True for ``burst_hold`` windows after the level-shift detector fired."""
        return 0 <= self._since_alarm < self.burst_hold

    # ------------------------------------------------------- burst detection
    def _detect(self, e: float) -> bool:
        """Update the CUSUM with residual ``e``; True when it fires."""
        fired = False
        if self._n_resid == 0 or self._scale <= 0.0:
            self._scale = abs(e)
            self._n_resid = 1
            return fired
        sigma = 1.25 * self._scale
        z = e / sigma if sigma > 0 else 0.0
        self._n_resid += 1
        armed = self._n_resid > self.burst_warmup
        if armed:
            k = self.cusum_k
            if self.cusum_clip > 0.0:
                z = max(-self.cusum_clip, min(self.cusum_clip, z))
            self._gpos = max(0.0, self._gpos + z - k)
            self._gneg = max(0.0, self._gneg - z - k)
            cz = self.confirm_z
            self._run_pos = self._run_pos + 1 if z > cz else 0
            self._run_neg = self._run_neg + 1 if z < -cz else 0
            r = self.min_run
            if (self._gpos > self.cusum_h and self._run_pos >= r) or (self._gneg > self.cusum_h and self._run_neg >= r):
                self._since_alarm = 0
                self._n_alarms += 1
                self._gpos = self._gneg = 0.0
                self._run_pos = self._run_neg = 0
                fired = True
        # winsorised scale update, so a burst does not inflate the scale
        zc = max(-3.0, min(3.0, z))
        d = self.scale_decay if self._n_resid > self.burst_warmup else 1.0 - 1.0 / self._n_resid
        self._scale = d * self._scale + (1.0 - d) * abs(zc) * sigma / 1.25
        return fired

    def _relevel(self, y: float):
        """After an alarm: every candidate adopts the new level outright
        (trend and seasonals kept; selection scores untouched)."""
        m = self.season_length
        j = self._t % m if m else 0
        ng = len(self.grid)
        lte = self._lte
        for idx, kind in enumerate(self._kinds):
            phi = self.grid[idx % ng][3]
            b = 3 * idx
            lev, tr = lte[b], lte[b + 1]
            zhat = lev + phi * tr + (self._seas[idx * m + j] if m else 0.0)
            lte[b] = lev + phi * tr + (self._fwd(kind, y) - zhat)
            lte[b + 1] = phi * tr
        self._t += 1
        self._wcache = self._fcache = None

    # ------------------------------------------------------------ cold start
    def _rescale_to(self, y: float):
        """First own window of a prior-built model: scale the prior shape so its
        one-step forecast equals the observed value."""
        f1 = self._forecast_raw(1)[0]
        if not (y > 0.0 and f1 > 0.0):
            return
        r = y / f1
        ng = len(self.grid)
        lte, seas, m = self._lte, self._seas, self.season_length
        for i, kind in enumerate(self._kinds):
            if kind == _RAW:
                lte[3 * i] *= r
                lte[3 * i + 1] *= r
                for k in range(i * m, (i + 1) * m):
                    seas[k] = seas[k] * r
            else:
                # keep multiplicative shape: shift the log level so the one-step
                # forecast matches (offset is small relative to the level)
                fi = self._cand_forecast(i, i % ng, 1)
                if fi + self._offset > 0 and fi * r + self._offset > 0:
                    lte[3 * i] += math.log((fi * r + self._offset) / (fi + self._offset))
            lte[3 * i + 2] *= r
        self._scale *= r
        self._wcache = self._fcache = None

    @classmethod
    def from_prior(
        cls,
        prior_states: list[dict],
        weights: list[float] | None = None,
        scale: float = 1.0,
        horizon: int | None = None,
    ) -> "TrendModel":
        """Start a new series from the current states of its category /
        substitute series.

        The priors must be up to date to the same closed window (their season
        clocks are aligned so the new series' first window is the priors' next
        one).  The new model forecasts the weighted prior shape at
        ``scale`` x the weighted prior level; on its first own window
        the whole shape is rescaled so the one-step forecast equals that value,
        and from then on it learns normally.  It stays ``is_provisional`` until
        it has ``min_history`` windows of its own.  Untrained priors are
        skipped; with none usable an untrained (forecast None) model is
        returned.
        """
        priors = [cls.from_state(s) if isinstance(s, dict) else s for s in prior_states]
        if weights is None:
            weights = [1.0] * len(priors)
        if len(weights) != len(priors):
            raise ValueError("weights and prior_states differ in length")
        if not priors:
            raise ValueError("need at least one prior state")
        base = priors[0]
        pairs = [(p, float(w)) for p, w in zip(priors, weights) if p._ready and w > 0]
        params = base._params()
        new = cls(season_length=base.season_length, horizon=horizon or base.horizon, **params)
        new._from_prior = True
        if not pairs:
            return new
        for p, _ in pairs:
            if p.season_length != base.season_length or p.grid != base.grid:
                raise ValueError("prior models must share season_length and grid")
        # only mix the candidate kinds every prior has
        log_ok = all(p._log_ok for p, _ in pairs)
        wsum = sum(w for _, w in pairs)
        pairs = [(p, w / wsum) for p, w in pairs]
        m = base.season_length
        ng = len(base.grid)
        # prior levels in original units (deseasonalised, via the raw candidates)
        levels = []
        prior_cands = [p._cand_lists() for p, _ in pairs]
        for cands_p in prior_cands:
            lv = _mean([c[1] for c in cands_p if c[0] == _RAW])
            levels.append(lv if lv > 0 else max(1e-9, abs(lv)))
        new_level = scale * sum(w * lv for (_, w), lv in zip(pairs, levels))
        new._log_ok = log_ok
        new._offset = sum(w * p._offset / lv for (p, w), lv in zip(pairs, levels)) * new_level if log_ok else 0.0
        kinds = [_RAW] + ([_LOG] if log_ok else [])
        cands = []
        for kind in kinds:
            for gi in range(ng):
                lev = tr = err = 0.0
                seas = [0.0] * m
                for (p, w), lv, cands_p in zip(pairs, levels, prior_cands):
                    c = cands_p[gi + (ng if kind == _LOG else 0)]
                    rot = [c[3][(p._t + j) % m] for j in range(m)] if m else []
                    if kind == _RAW:
                        lev += w * new_level
                        tr += w * c[2] / lv * new_level
                        seas = [a + w * v / lv * new_level for a, v in zip(seas, rot)]
                    else:
                        lev += w * (c[1] - math.log(lv + p._offset))
                        tr += w * c[2]
                        seas = [a + w * v for a, v in zip(seas, rot)]
                    err += w * c[4] / lv * new_level
                if kind == _LOG:
                    lev += math.log(new_level + new._offset)
                cands.append([kind, lev, tr, seas, err])
        new._set_cands(cands)
        new._ready = True
        new._t = 0
        new._scale = sum(w * p._scale / lv for (p, w), lv in zip(pairs, levels)) * new_level
        new._n_resid = 0  # detector re-warms on own residuals
        new._rescale_pending = True
        return new


class PriorSeeds:
    """``TrendModel.from_prior([state], scale=scale)``, built once per prior state and copied.

    A category's owner publishes one prior state for its new items at each closed window, and
    every brand-new item of the category starts from it: building the model from the state cost
    about 70 us an item, a copy about a tenth of it (and a copy shares the state JSON once worked
    out, for the flush). Prior states are recognised by identity: they are never changed in place
    (a new prior is a new document), and each one is held here while memoised, so its id is not
    reused meanwhile.

    >>> seeds = PriorSeeds(max_entries=2)
    >>> prior = TrendModel(); prior.learn_one(3.0); prior.learn_one(5.0); prior.learn_one(4.0)
    >>> state = prior.to_state()
    >>> a, b = seeds.model(state, 0.5), seeds.model(state, 0.5)
    >>> a is not b and a.to_state() == b.to_state() == TrendModel.from_prior([state], scale=0.5).to_state()
    True
    """

    def __init__(self, max_entries: int = 4096):
        self.max_entries = max_entries
        self._memo: dict[tuple, tuple[dict, TrendModel]] = {}

    def model(self, state: dict, scale: float) -> TrendModel:
        key = (id(state), scale)
        hit = self._memo.get(key)
        if hit is None or hit[0] is not state:
            if len(self._memo) >= self.max_entries:
                self._memo.clear()  # bounded; priors change at every closed window anyway
            seed = TrendModel.from_prior([state], scale=scale)
            seed.state_json()  # worked out once: the copies share it until they learn
            hit = self._memo[key] = (state, seed)
        return hit[1].copy()


def model_state(model: TrendModel, as_json: bool = False):
    """``model.to_state()``; or, ``as_json``, its cached :meth:`TrendModel.state_json` as an
    ``orjson.Fragment``, for a state document serialised with orjson (the same bytes, without
    rebuilding and serialising an unchanged model)."""
    return orjson.Fragment(model.state_json()) if as_json else model.to_state()


def summarise(model: TrendModel) -> dict:
    """Compact, JSON-ready view of a :class:`TrendModel` for HTTP endpoints.

    >>> summarise(TrendModel())["forecast"] is None
    True
    """
    return {
        "forecast": model.forecast(),
        "slope": model.slope(),
        "burst": model.burst(),
        "n_windows": model.n_seen,
        "provisional": model.is_provisional,
        "method": model.method,
    }
