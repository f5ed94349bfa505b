"""The CSS shared by echo_lab's widgets: JupyterLab theme variables, so light and dark both
read well (with fallbacks for classic Notebook and Voilà)."""

from __future__ import annotations

import ipywidgets as widgets

__all__ = ["PALETTE", "STYLE", "style_widget"]

#: Line colours (Tableau 10), distinct on white and on dark grey.
PALETTE = [
    "#4e79a7",
    "#f28e2b",
    "#e15759",
    "#76b7b2",
    "#59a14f",
    "#edc948",
    "#b07aa1",
    "#ff9da7",
    "#9c755f",
    "#bab0ac",
]

STYLE = """
<style>
.echo-w { --echo-accent: var(--jp-brand-color1, #1976d2);
  --echo-fg: var(--jp-ui-font-color1, rgba(0,0,0,.87));
  --echo-fg2: var(--jp-ui-font-color2, rgba(0,0,0,.54));
  --echo-border: var(--jp-border-color2, #e0e0e0);
  --echo-bg2: var(--jp-layout-color2, #eeeeee);
  --echo-ok: var(--jp-success-color1, #388e3c);
  --echo-err: var(--jp-error-color1, #d32f2f);
  color: var(--echo-fg); font-family: var(--jp-ui-font-family, system-ui, sans-serif); }
.echo-w .echo-title { font-size: 14px; font-weight: 600; }
.echo-w .echo-sub { color: var(--echo-fg2); font-size: 12px; }
.echo-w .echo-kpi { font-size: 13px; }
.echo-w .echo-kpi b { font-size: 18px; font-variant-numeric: tabular-nums; }
.echo-table { border-collapse: collapse; font-size: 12.5px; width: 100%;
  font-variant-numeric: tabular-nums; color: var(--echo-fg); }
.echo-table th { text-align: left; font-weight: 600; color: var(--echo-fg2);
  border-bottom: 1px solid var(--echo-border); padding: 3px 10px 3px 4px; white-space: nowrap; }
.echo-table td { border-bottom: 1px solid var(--echo-border); padding: 2px 10px 2px 4px;
  white-space: nowrap; max-width: 360px; overflow: hidden; text-overflow: ellipsis; }
.echo-table td.num, .echo-table th.num { text-align: right; }
.echo-table tr.echo-selected td { background: var(--echo-bg2); }
.echo-table tr.echo-dead td.echo-topic { color: var(--echo-err); }
.echo-table td.echo-mono { font-family: var(--jp-code-font-family, monospace); font-size: 12px; }
.echo-empty { color: var(--echo-fg2); font-style: italic; font-size: 12px; padding: 4px; }
.echo-status-ok { color: var(--echo-ok); font-size: 12px; }
.echo-status-err { color: var(--echo-err); font-size: 12px; }
.echo-spark { vertical-align: middle; }
.echo-legend { display: flex; flex-wrap: wrap; gap: 4px 18px; font-size: 13px;
  margin: 2px 0 2px 60px; font-variant-numeric: tabular-nums; }
.echo-legend-item { white-space: nowrap; }
.echo-swatch { display: inline-block; width: 14px; height: 3px; border-radius: 2px;
  vertical-align: middle; margin-right: 6px; }
.echo-plot .echo-sub { margin-left: 60px; }
</style>
"""


def style_widget() -> widgets.HTML:
    """An invisible HTML widget carrying :data:`STYLE` (put one in each top-level widget)."""
    w = widgets.HTML(STYLE, layout=widgets.Layout(height="0px", margin="0px"))
    return w
