"""grafanalib, extended where 0.7 lacks a field.

- ``PromTarget``: Prometheus query with ``exemplar`` (links samples to traces),
  ``editorMode``, ``range``/``instant`` and the ``${datasource}`` variable.
- ``ext()``: any panel class gains float ``min``/``max`` (grafanalib only takes
  ints), field ``links`` (data links), panel ``links``, ``thresholds`` as
  Grafana 11 steps, extra ``fieldConfig.defaults`` and ``options``, and always
  uses the datasource variable.
- ``Heatmap``: Grafana 11's heatmap panel, written as raw JSON (grafanalib 0.7
  only knows the legacy heatmap).
- ``grafana11()``: grafanalib writes a schemaVersion 12 dashboard; this turns
  its JSON into what Grafana 11 (schemaVersion 39) stores, so nothing is left
  for Grafana's migrations to reinterpret (the one place we post-process).
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
        panelLinks: list[dict[str, Any]] = attr.ib(factory=list)
        steps: list[tuple[str, float | None]] = attr.ib(factory=list)  # (colour, from value); first from None

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
            if self.steps:
                defaults["thresholds"] = {"mode": "absolute",
                                          "steps": [{"color": c, "value": v} for c, v in self.steps]}
            if self.panelLinks:
                d["links"] = list(self.panelLinks)
            defaults.update(self.extraDefaults)
            if self.extraCustom:
                defaults.setdefault("custom", {}).update(self.extraCustom)
            d.setdefault("options", {}).update(self.extraOptions)
            return d

    Extended.__name__ = Extended.__qualname__ = cls.__name__
    _EXTENDED[cls] = Extended
    return Extended


@attr.s
class _RawPanel(g.Panel):
    """A panel grafanalib cannot express: ``raw`` is merged into the common panel JSON."""

    panelType: str = attr.ib(default="")
    raw: dict[str, Any] = attr.ib(factory=dict)

    def to_json_data(self) -> dict[str, Any]:
        return self.panel_json({"type": self.panelType, **self.raw})


def heatmap(unit: str = "s", **kwargs: Any) -> Any:
    """Grafana 11 heatmap of pre-bucketed (``format: heatmap``) Prometheus histograms, exemplars shown."""
    return ext(_RawPanel)(panelType="heatmap", unitId=unit, raw={"options": {
        "calculate": False,
        "cellGap": 1,
        "color": {"mode": "scheme", "scheme": "Oranges", "fill": "dark-orange", "scale": "exponential",
                  "exponent": 0.5, "steps": 64, "reverse": False},
        "exemplars": {"color": "rgba(255,0,255,0.7)"},
        "filterValues": {"le": 1e-9},
        "legend": {"show": True},
        "rowsFrame": {"layout": "le"},
        "showValue": "never",
        "tooltip": {"mode": "single", "yHistogram": True},
        "yAxis": {"axisPlacement": "left", "unit": unit},
    }}, **kwargs)


TimeSeries = ext(g.TimeSeries)
Stat = ext(g.Stat)
Table = ext(g.Table)
BarGauge = ext(g.BarGauge)


def datasource_variable() -> g.Template:
    return g.Template(name=DS_VAR, label="Data source", query="prometheus", type="datasource", default="Prometheus")


def query_variable(name: str, label: str, query: str, *, multi: bool = True, include_all: bool = True) -> g.Template:
    return g.Template(
        name=name, label=label, query=query, dataSource=DS, multi=multi, includeAll=include_all,
        allValue=".+" if include_all else None, refresh=g.REFRESH_ON_TIME_RANGE_CHANGE, default="All" if include_all else None,
        sort=g.SORT_ALPHA_ASC,
    )


def link(title: str, url: str) -> dict[str, Any]:
    return {"title": title, "url": url, "targetBlank": False}


PLUGIN_VERSION = "11.0.0"
SCHEMA_VERSION = 39
# Keys grafanalib writes that Grafana 11 no longer has (dashboard, panel, template variable).
_LEGACY_DASHBOARD = ("rows", "style", "hideControls", "sharedCrosshair", "gnetId", "__inputs")
_LEGACY_PANEL = ("cacheTimeout", "editable", "error", "height", "span", "minSpan", "maxPerRow", "maxDataPoints",
                 "repeat", "repeatDirection", "hideTimeOverride", "columns", "fontSize", "mappings", "color",
                 "interval", "timeShift")
_LEGACY_VARIABLE = ("auto", "auto_count", "auto_min", "tagValuesQuery", "tagsQuery", "useTags")


def _steps(thresholds: Any) -> list[dict[str, Any]]:
    steps = thresholds.get("steps") if isinstance(thresholds, dict) else None
    if not steps:  # grafanalib writes "" or [] for "no thresholds": Grafana's default base step
        return [{"color": "green", "value": None}]
    out = []
    for i, step in enumerate(steps):
        value = step.get("value")
        out.append({"color": step["color"], "value": None if i == 0 or value in (None, "null") else float(value)})
    return out


def _panel(p: dict[str, Any]) -> dict[str, Any]:
    p = {k: v for k, v in p.items() if k not in _LEGACY_PANEL and v is not None}
    if p["type"] == "row":
        return {k: p[k] for k in ("type", "title", "gridPos", "id", "collapsed", "panels") if k in p}
    p["pluginVersion"] = PLUGIN_VERSION
    if not p.get("timeFrom"):
        p.pop("timeFrom", None)
    defaults = p.setdefault("fieldConfig", {}).setdefault("defaults", {})
    p["fieldConfig"].setdefault("overrides", [])
    defaults["thresholds"] = {"mode": "absolute", "steps": _steps(defaults.get("thresholds"))}
    options = p.setdefault("options", {})
    legacy = options.pop("fieldOptions", None)
    if legacy is not None:  # bar gauge: reduce options replace fieldOptions (and its max: 100)
        options["reduceOptions"] = {"calcs": ["lastNotNull"], "fields": "", "values": False}
        options.setdefault("minVizHeight", 16)
        options.setdefault("minVizWidth", 0)
        options.setdefault("valueMode", "color")
        options.setdefault("namePlacement", "auto")
        options.setdefault("sizing", "auto")
    return p


def grafana11(d: dict[str, Any]) -> dict[str, Any]:
    """grafanalib's dashboard JSON as Grafana 11 stores it (see the module docstring)."""
    out = {k: v for k, v in d.items() if k not in _LEGACY_DASHBOARD}
    out["schemaVersion"] = SCHEMA_VERSION
    out["editable"] = False  # provisioned copies: change the generator, not the dashboard
    out["graphTooltip"] = 1 if d.get("sharedCrosshair") else d.get("graphTooltip", 0)
    out["timepicker"] = {k: v for k, v in d.get("timepicker", {}).items() if k not in ("time_options", "nowDelay")}
    out["panels"] = [_panel(p) for p in d["panels"]]
    for p in out["panels"]:
        if p["type"] == "row":
            p["panels"] = [_panel(c) for c in p.get("panels", [])]
    for v in out["templating"]["list"]:
        for k in _LEGACY_VARIABLE:
            v.pop(k, None)
        if v["type"] == "query":
            v["definition"] = v["query"]
    return out
