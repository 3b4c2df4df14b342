"""Rate-distortion figures (matplotlib): one line per curve, PNG + PDF, fixed pixel size.

cbexp curves are solid lines with filled markers; published curves are dashed with open markers;
classical codecs (JPEG, WebP, ...) are grey-to-black dash-dot lines with white-filled markers,
labelled "<codec> (classical)". A curve with a single rate point is a marker alone, still visible.
Figures are plain ``matplotlib.figure.Figure`` objects, not pyplot ones: they render with Agg
(PNG) / the PDF backend whatever the session's GUI backend is, and leave no global state.
"""

import pathlib

import matplotlib
import numpy as np
from matplotlib.figure import Figure

from cbexp.analysis.points import curves_of

FIGSIZE = (6.4, 4.8)  # inches
DPI = 150  # -> PNGs of 960 x 720 pixels (no tight bbox: the size stays fixed)
PNG_SIZE = (int(FIGSIZE[0] * DPI), int(FIGSIZE[1] * DPI))

QUALITY_LABELS = {
  "psnr": "PSNR (RGB) [dB]",
  "ms_ssim_db": "MS-SSIM (RGB) [dB], $-10\\,\\log_{10}(1-\\mathrm{MS\\text{-}SSIM})$",
}
MARKERS = "osD^v<>pPX*h"
CLASSICAL_COLORS = ("black", "dimgray", "gray", "darkgray", "silver", "slategray", "lightslategray")
CLASSICAL_MARKERS = "s^vDx+*"


SPREAD = {"psnr": "psnr_sd", "ms_ssim_db": "ms_ssim_db_sd"}


def rd_figure(points, quality="psnr", title=None, xlim=None, caption=None):
  """-> a matplotlib Figure of bpp vs ``quality`` for every curve of ``points`` that has it.

  Points that average several seeds get error bars of +-1 standard deviation over the seeds on
  both axes. ``xlim`` (bpp range) zooms in; the quality axis then fits the points inside that
  range. ``caption``: a line under the axes (which images the models trained and were tested
  on)."""
  fig = Figure(figsize=FIGSIZE, dpi=DPI, layout="constrained")
  ax = fig.subplots()
  plotted = classical = 0
  for i, (cid, rows) in enumerate(curves_of(points)):
    rows = rows[np.isfinite(rows["bpp"].astype(float)) & np.isfinite(rows[quality].astype(float))]
    if rows.empty:
      continue
    if rows["source"].iloc[0] == "classical":  # its own grey scale, whatever curves come first
      _plot_classical(ax, classical, rows, quality)
      classical += 1
    else:
      _plot_curve(ax, i, rows, quality)
    plotted += 1
  if xlim is not None:
    _zoom(ax, points, quality, xlim)
  _decorate(ax, quality, title, caption)
  if plotted:
    only_published = (points["source"] == "published").all()
    ax.legend(loc="lower right" if only_published else "best", fontsize="small", framealpha=0.9)
  else:
    ax.text(0.5, 0.5, f"no points with {quality}", ha="center", va="center", transform=ax.transAxes)
  return fig


def _plot_curve(ax, i, rows, quality):
  """The ``i``-th curve: solid with filled markers (cbexp) or dashed with open ones (published),
  a marker alone for a single point, and the seeds' spread as error bars."""
  colors = matplotlib.colormaps["tab10"].colors
  published = rows["source"].iloc[0] == "published"
  label = rows["curve"].iloc[0] if published else f"cbexp: {rows['curve'].iloc[0]}"
  style = dict(
    color=colors[i % len(colors)],
    marker=MARKERS[i % len(MARKERS)],
    label=label,
    markersize=8 if len(rows) == 1 else 5 if published else 6,
    markerfacecolor="none" if published else colors[i % len(colors)],
  )
  if len(rows) == 1:
    ax.plot(rows["bpp"], rows[quality], linestyle="none", **style)
  else:
    ax.plot(
      rows["bpp"],
      rows[quality],
      linestyle="--" if published else "-",
      linewidth=1.2 if published else 1.8,
      **style,
    )
  spread = rows.get(SPREAD[quality])
  if spread is not None and np.isfinite(spread.astype(float)).any():
    ax.errorbar(
      rows["bpp"],
      rows[quality],
      xerr=rows["bpp_sd"].astype(float).fillna(0),
      yerr=spread.astype(float).fillna(0),
      fmt="none",
      ecolor=style["color"],
      elinewidth=1.0,
      capsize=2.5,
    )


def _plot_classical(ax, i, rows, quality):
  """A classical codec: grey to black, dash-dot, white-filled markers, "<codec> (classical)"."""
  ax.plot(
    rows["bpp"],
    rows[quality],
    linestyle="-." if len(rows) > 1 else "none",
    linewidth=1.2,
    color=CLASSICAL_COLORS[i % len(CLASSICAL_COLORS)],
    marker=CLASSICAL_MARKERS[i % len(CLASSICAL_MARKERS)],
    markersize=5,
    markerfacecolor="white",
    label=f"{rows['curve'].iloc[0]} (classical)",
  )


def _decorate(ax, quality, title, caption):
  """Axis labels, grids, the title and the caption."""
  ax.set_xlabel("Rate [bits per pixel]")
  ax.set_ylabel(QUALITY_LABELS[quality])
  ax.grid(True, which="major", alpha=0.4)
  ax.grid(True, which="minor", alpha=0.15)
  ax.minorticks_on()
  if title:
    ax.set_title(title)
  if caption:  # inside the axes, top left: the corner RD curves leave empty
    ax.text(
      0.01,
      0.99,
      caption,
      transform=ax.transAxes,
      fontsize="x-small",
      ha="left",
      va="top",
      wrap=True,
      bbox=dict(facecolor="white", edgecolor="none", alpha=0.8),
    )


def _zoom(ax, points, quality, xlim):
  lo, hi = float(xlim[0]), float(xlim[1])
  ax.set_xlim(lo, hi)
  inside = points[(points["bpp"] >= lo) & (points["bpp"] <= hi)][quality].astype(float).dropna()
  if len(inside):
    margin = max(0.05 * (inside.max() - inside.min()), 0.25)
    ax.set_ylim(inside.min() - margin, inside.max() + margin)


def save_figure(fig, out_dir, stem):
  """Writes <stem>.png and <stem>.pdf; -> their paths."""
  out_dir = pathlib.Path(out_dir)
  out_dir.mkdir(parents=True, exist_ok=True)
  paths = [out_dir / f"{stem}.png", out_dir / f"{stem}.pdf"]
  for path in paths:
    fig.savefig(path, dpi=DPI, metadata=_metadata(path))
  return paths


def _metadata(path):
  # No creation date or software version: the same numbers give the same file.
  if path.suffix == ".pdf":
    return {"CreationDate": None, "Producer": None, "Creator": None}
  return {"Software": None}


def has_quality(points, quality):
  return bool(np.isfinite(points[quality].astype(float)).any())
