"""grafanalib, extended where 0.7 lacks a field.

- ``PromTarget``: Prometheus query with ``exemplar`` (links samples to traces),
  ``editorMode``, ``range``/``instant`` and the ``${datasource}`` variable.
- ``ext()``: any panel class gains float ``min``/``max`` (grafanalib only takes
  ints), field ``links`` (data links), extra ``fieldConfig.defaults`` and
  ``options``, and always uses the datasource variable.
"""
from __future__ import annotations

from typing import Any

import attr
from grafanalib import core as g

DS_VAR = "datasource"
DS = {"type": "prometheus", "uid": "${%s}" % DS_VAR}


@attr.s
class PromTarget(g.Target):
    exemplar = attr.ib(default=False, validator=attr.validators.instance_of(bool))

    def to_json_data(self) -> dict[str, Any]:
        d = super().to_json_data()
        for unused in ("target", "metric", "step", "query"):
            d.pop(unused, None)
        d.update(datasource=DS, exemplar=self.exemplar, editorMode="code", range=not self.instant,
                 instant=self.instant, intervalFactor=1)
        if self.instant:
            d["format"] = "table"
        return d


_EXTENDED: dict[type, type] = {}


def ext(cls: type) -> type:
    """``cls`` with float min/max, data links and extra fieldConfig/options."""
    if cls in _EXTENDED:
        return _EXTENDED[cls]

    @attr.s
    class Extended(cls):
        fmin = attr.ib(default=None)
        fmax = attr.ib(default=None)
        dataLinks: list[dict[str, Any]] = attr.ib(factory=list)
        unitId = attr.ib(default="")
        extraDefaults: dict[str, Any] = attr.ib(factory=dict)
        extraCustom: dict[str, Any] = attr.ib(factory=dict)
        extraOptions: dict[str, Any] = attr.ib(factory=dict)

        def to_json_data(self) -> dict[str, Any]:
            d = super().to_json_data()
            d["datasource"] = DS
            defaults = d.setdefault("fieldConfig", {}).setdefault("defaults", {})
            d["fieldConfig"].setdefault("overrides", [])
            if self.fmin is not None:
                defaults["min"] = float(self.fmin)
            if self.fmax is not None:
                defaults["max"] = float(self.fmax)
            if self.unitId:
                defaults["unit"] = self.unitId
            if self.dataLinks:
                defaults["links"] = list(self.dataLinks)
            defaults.update(self.extraDefaults)
            if self.extraCustom:
                defaults.setdefault("custom", {}).update(self.extraCustom)
            d.setdefault("options", {}).update(self.extraOptions)
            return d

    Extended.__name__ = Extended.__qualname__ = cls.__name__
    _EXTENDED[cls] = Extended
    return Extended


TimeSeries = ext(g.TimeSeries)
Stat = ext(g.Stat)
Table = ext(g.Table)
BarGauge = ext(g.BarGauge)


def datasource_variable() -> g.Template:
    return g.Template(name=DS_VAR, label="Data source", query="prometheus", type="datasource", default="Prometheus")


def query_variable(name: str, label: str, query: str, *, multi: bool = True, include_all: bool = True) -> g.Template:
    return g.Template(
        name=name, label=label, query=query, dataSource=DS, multi=multi, includeAll=include_all,
        allValue=".*" if include_all else None, refresh=g.REFRESH_ON_TIME_RANGE_CHANGE, default="All" if include_all else None,
        sort=g.SORT_ALPHA_ASC,
    )


def link(title: str, url: str) -> dict[str, Any]:
    return {"title": title, "url": url, "targetBlank": False}
