"""Online purchase propensity from session features.

:class:`PropensityModel` is a hand-written online logistic regression (the same
model as River's ``linear_model.LogisticRegression`` behind a
``preprocessing.StandardScaler``), written out so that its whole state (scaler
moments, weights, intercept, AdaGrad accumulators) is a plain JSON dict; River's
own objects would have to be pickled or poked at through private attributes.

Features (``x`` is a dict; missing keys count as 0)::

    views, carts          -> log1p(count)
    dwell_s               -> log1p(seconds)
    mean_price            -> log1p(price)
    recency_s             -> log1p(seconds since the previous session / event)

Each transformed feature is standardised with running (Welford) moments
updated *before* the gradient step, then an AdaGrad step on the log-loss with
a small L2 penalty.  ``predict_proba_one`` works (returns the prior 0.5) before
any learning.

:class:`ProgressiveScore` does progressive validation (predict, then learn):
mean log-loss and ROC AUC.  AUC is exact up to ties inside one of
``n_bins`` (default 1000) equal-width probability bins: two class histograms
are kept (sparse dicts, JSON-ready) and AUC = P(score_pos > score_neg) +
0.5 P(same bin).  With 1000 bins the discretisation error is bounded by the
share of positive/negative pairs falling in a common 0.001-wide bin.

>>> m = PropensityModel()
>>> m.predict_proba_one({"views": 3})
0.5
>>> score = ProgressiveScore()
>>> for i in range(200):
...     x = {"views": 5, "carts": i % 2, "dwell_s": 30 + 60 * (i % 2)}
...     y = bool(i % 2)
...     score.update(y, m.predict_proba_one(x))
...     m.learn_one(x, y)
>>> score.auc() > 0.9
True
>>> PropensityModel.from_state(m.to_state()).predict_proba_one(x) == m.predict_proba_one(x)
True
"""

from __future__ import annotations

import math

__all__ = ["PropensityModel", "ProgressiveScore", "FEATURES", "STATE_VERSION"]

STATE_VERSION = 1

FEATURES: tuple[str, ...] = ("views", "carts", "dwell_s", "mean_price", "recency_s")


def _sigmoid(z: float) -> float:
    if z >= 0:
        return 1.0 / (1.0 + math.exp(-z))
    e = math.exp(z)
    return e / (1.0 + e)


def transform(x: dict) -> dict[str, float]:
    """Raw session features -> log1p-scaled features (negatives clipped at 0)."""
    out = {}
    for f in FEATURES:
        v = x.get(f, 0.0)
        v = 0.0 if v is None else float(v)
        if not math.isfinite(v):
            v = 0.0
        out[f] = math.log1p(max(v, 0.0))
    return out


class PropensityModel:
    """Online logistic regression, P(purchase | session features).

    Parameters
    ----------
    lr
        AdaGrad base learning rate.
    l2
        L2 penalty on the weights (not the intercept).
    clip
        Standardised features are clipped to +/- ``clip``.
    """

    def __init__(self, lr: float = 0.1, l2: float = 1e-4, clip: float = 6.0):
        self.lr = float(lr)
        self.l2 = float(l2)
        self.clip = float(clip)
        self._n = 0
        self._mean = {f: 0.0 for f in FEATURES}
        self._m2 = {f: 0.0 for f in FEATURES}
        self._w = {f: 0.0 for f in FEATURES}
        self._b = 0.0
        self._g2 = {f: 0.0 for f in FEATURES}
        self._g2b = 0.0

    @property
    def n_seen(self) -> int:
        return self._n

    @property
    def weights(self) -> dict[str, float]:
        return dict(self._w)

    def _scaled(self, x: dict) -> dict[str, float]:
        return self._standardised(transform(x))

    def _standardised(self, z: dict) -> dict[str, float]:
        out = {}
        n, mean, m2, clip = self._n, self._mean, self._m2, self.clip
        for f in FEATURES:
            var = m2[f] / n if n > 1 else 0.0
            sd = math.sqrt(var)
            v = (z[f] - mean[f]) / sd if sd > 1e-12 else 0.0
            out[f] = max(-clip, min(clip, v))
        return out

    def predict_proba_one(self, x: dict) -> float:
        return self._proba(self._scaled(x))

    def _proba(self, s: dict) -> float:
        return _sigmoid(self._b + sum(self._w[f] * s[f] for f in FEATURES))

    def predict_one(self, x: dict) -> bool:
        return self.predict_proba_one(x) >= 0.5

    def learn_one(self, x: dict, y: bool) -> None:
        self._learn_transformed(transform(x), y)

    def predict_learn_one(self, x: dict, y: bool) -> float:
        """``predict_proba_one(x)``, then ``learn_one(x, y)``: progressive validation's step, with
        the features transformed once (the same figures as the two calls; a worker does this for
        every closed session).

        >>> a, b = PropensityModel(), PropensityModel()
        >>> xs = [({"views": v, "carts": v % 3, "dwell_s": 7.0 * v}, v % 2 == 0) for v in range(50)]
        >>> [a.predict_learn_one(x, y) for x, y in xs] == [(b.predict_proba_one(x), b.learn_one(x, y))[0] for x, y in xs]
        True
        >>> a.to_state() == b.to_state()
        True
        """
        z = transform(x)
        p = self._proba(self._standardised(z))
        self._learn_transformed(z, y)
        return p

    def _learn_transformed(self, z: dict, y: bool) -> None:
        self._n += 1
        for f in FEATURES:  # Welford moments, then standardise with them
            d = z[f] - self._mean[f]
            self._mean[f] += d / self._n
            self._m2[f] += d * (z[f] - self._mean[f])
        s = self._standardised(z)  # the features transformed once (the same z as _scaled(x) gives)
        g = self._proba(s) - (1.0 if y else 0.0)
        for f in FEATURES:
            gf = g * s[f] + self.l2 * self._w[f]
            self._g2[f] += gf * gf
            self._w[f] -= self.lr * gf / (math.sqrt(self._g2[f]) + 1e-8)
        self._g2b += g * g
        self._b -= self.lr * g / (math.sqrt(self._g2b) + 1e-8)

    def to_state(self) -> dict:
        return {
            "version": STATE_VERSION,
            "kind": "PropensityModel",
            "params": {"lr": self.lr, "l2": self.l2, "clip": self.clip},
            "features": list(FEATURES),
            "n": self._n,
            "mean": dict(self._mean),
            "m2": dict(self._m2),
            "w": dict(self._w),
            "b": self._b,
            "g2": dict(self._g2),
            "g2b": self._g2b,
        }

    @classmethod
    def from_state(cls, d: dict) -> "PropensityModel":
        if d.get("version") != STATE_VERSION:
            raise ValueError(f"unsupported PropensityModel state version: {d.get('version')!r}")
        if list(d["features"]) != list(FEATURES):
            raise ValueError("feature set differs from this code's FEATURES")
        m = cls(**d["params"])
        m._n = int(d["n"])
        m._mean = {f: float(d["mean"][f]) for f in FEATURES}
        m._m2 = {f: float(d["m2"][f]) for f in FEATURES}
        m._w = {f: float(d["w"][f]) for f in FEATURES}
        m._b = float(d["b"])
        m._g2 = {f: float(d["g2"][f]) for f in FEATURES}
        m._g2b = float(d["g2b"])
        return m


class ProgressiveScore:
    """Progressive (predict-then-learn) log-loss and binned-exact ROC AUC.

    Call :meth:`update` with the label and the probability predicted *before*
    the model learnt that example.

    >>> s = ProgressiveScore()
    >>> for y, p in [(True, 0.9), (False, 0.2), (True, 0.6), (False, 0.7)]:
    ...     s.update(y, p)
    >>> s.auc()
    0.75
    >>> round(s.logloss(), 4)
    0.5108
    >>> ProgressiveScore.from_state(s.to_state()).auc() == s.auc()
    True
    """

    def __init__(self, n_bins: int = 1000, eps: float = 1e-15):
        self.n_bins = int(n_bins)
        self.eps = float(eps)
        self._n = 0
        self._loss_sum = 0.0
        self._pos: dict[int, int] = {}
        self._neg: dict[int, int] = {}

    @property
    def n(self) -> int:
        return self._n

    def _bin(self, p: float) -> int:
        return min(self.n_bins - 1, max(0, int(p * self.n_bins)))

    def update(self, y_true: bool, p: float) -> None:
        p = float(p)
        pc = min(1.0 - self.eps, max(self.eps, p))
        self._loss_sum += -math.log(pc) if y_true else -math.log(1.0 - pc)
        self._n += 1
        h = self._pos if y_true else self._neg
        b = self._bin(p)
        h[b] = h.get(b, 0) + 1

    def logloss(self) -> float | None:
        return self._loss_sum / self._n if self._n else None

    def auc(self) -> float | None:
        """None until both classes have been seen."""
        npos, nneg = sum(self._pos.values()), sum(self._neg.values())
        if not npos or not nneg:
            return None
        below = 0  # negatives in strictly lower bins
        acc = 0.0
        for b in sorted(set(self._pos) | set(self._neg)):
            pb, nb = self._pos.get(b, 0), self._neg.get(b, 0)
            acc += pb * (below + 0.5 * nb)
            below += nb
        return acc / (npos * nneg)

    def get(self) -> dict:
        return {"n": self._n, "logloss": self.logloss(), "auc": self.auc()}

    def to_state(self) -> dict:
        return {
            "version": STATE_VERSION,
            "kind": "ProgressiveScore",
            "n_bins": self.n_bins,
            "eps": self.eps,
            "n": self._n,
            "loss_sum": self._loss_sum,
            # JSON object keys are strings
            "pos": {str(k): v for k, v in self._pos.items()},
            "neg": {str(k): v for k, v in self._neg.items()},
        }

    @classmethod
    def from_state(cls, d: dict) -> "ProgressiveScore":
        if d.get("version") != STATE_VERSION:
            raise ValueError(f"unsupported ProgressiveScore state version: {d.get('version')!r}")
        s = cls(n_bins=d["n_bins"], eps=d["eps"])
        s._n = int(d["n"])
        s._loss_sum = float(d["loss_sum"])
        s._pos = {int(k): int(v) for k, v in d["pos"].items()}
        s._neg = {int(k): int(v) for k, v in d["neg"].items()}
        return s
