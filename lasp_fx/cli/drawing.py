"""Draw an FX graph with the detector's matches highlighted: a layered layout, written as SVG or PNG.

No graphviz: nodes are placed in layers by longest path from the inputs (parameters and inputs
sit just above their first user), ordered inside a layer by the mean position of their inputs,
and drawn as boxes (SVG by hand, PNG with matplotlib). Each match gets a colour and a legend
line with its source; near-misses are outlined in orange.
"""

from __future__ import annotations

from dataclasses import dataclass
from xml.sax.saxutils import escape

import networkx as nx
from torch.fx import GraphModule, Node

BOX_W, BOX_H, GAP_X, ROW_H, MARGIN, LEGEND_ROW = 150, 26, 18, 50, 20, 18
PALETTE = ["#8ecae6", "#b5e48c", "#f4a3c0", "#ffd166", "#c8b6ff", "#90e0c0", "#f6bd60", "#a0c4ff"]
PLAIN, NEAR_MISS = "#eeeeee", "#f77f00"


@dataclass
class Box:
    x: float
    y: float
    label: str
    title: str
    fill: str
    outline: str


@dataclass
class Drawing:
    """Boxes, edges between box centres, legend lines (colour, text) and the canvas size."""

    boxes: dict[str, Box]
    edges: list[tuple[str, str]]
    legend: list[tuple[str, str]]
    width: float
    height: float


def layout(gm: GraphModule, matches: list[tuple[str, set[Node]]], near: list[tuple[str, Node]]) -> Drawing:
    """Place every node of `gm`; `matches` are (legend text, region nodes), `near` (text, node)."""
    g = nx.DiGraph()
    for n in gm.graph.nodes:
        g.add_node(n.name)
        g.add_edges_from((a.name, n.name) for a in n.all_input_nodes)
    layers = _layers(g, {n.name for n in gm.graph.nodes if n.op in ("placeholder", "get_attr")})
    rows = _order(g, layers)
    fill = {n.name: PALETTE[i % len(PALETTE)] for i, (_, region) in enumerate(matches) for n in region}
    near_names = {n.name for _, n in near if n is not None}
    legend = [(PALETTE[i % len(PALETTE)], f"match {i + 1}: {text}") for i, (text, _) in enumerate(matches)]
    legend += [(NEAR_MISS, f"near-miss: {text}") for text, _ in near]
    top = MARGIN + LEGEND_ROW * len(legend) + (MARGIN if legend else 0)
    widest = max(len(r) for r in rows) if rows else 1
    width = 2 * MARGIN + widest * (BOX_W + GAP_X)
    nodes = {n.name: n for n in gm.graph.nodes}
    boxes = {}
    for depth, row in enumerate(rows):
        left = (width - len(row) * (BOX_W + GAP_X) + GAP_X) / 2
        for i, name in enumerate(row):
            label, title = _label(nodes[name])
            boxes[name] = Box(left + i * (BOX_W + GAP_X), top + depth * ROW_H, label, title,
                              fill.get(name, PLAIN), NEAR_MISS if name in near_names else "#555555")
    return Drawing(boxes, list(g.edges), legend, width, top + len(rows) * ROW_H + MARGIN)


def _layers(g: nx.DiGraph, sources: set[str]) -> dict[str, int]:
    depth: dict[str, int] = {}
    for name in nx.topological_sort(g):
        preds = [depth[p] + 1 for p in g.predecessors(name) if p not in sources]
        depth[name] = max(preds, default=0)
    for name in sources:  # just above the first user, instead of all in the top row
        users = [depth[u] for u in g.successors(name)]
        depth[name] = max(min(users, default=1) - 1, 0)
    for name in nx.topological_sort(g):  # users of a moved source must stay below it
        depth[name] = max([depth[name]] + [depth[p] + 1 for p in g.predecessors(name)])
    return depth


def _order(g: nx.DiGraph, depth: dict[str, int]) -> list[list[str]]:
    rows: list[list[str]] = [[] for _ in range(max(depth.values(), default=-1) + 1)]
    for name in g.nodes:  # graph order first: already close to a good order
        rows[depth[name]].append(name)
    for _ in range(2):  # barycentre sweeps: each node under the mean position of its inputs
        pos = {name: i for row in rows for i, name in enumerate(row)}
        for row in rows[1:]:
            row.sort(key=lambda n: _mean([pos[p] for p in g.predecessors(n)], pos[n]))
            pos.update({name: i for i, name in enumerate(row)})
    return rows


def _mean(xs, default):
    return sum(xs) / len(xs) if xs else default


def _label(node: Node) -> tuple[str, str]:
    if node.op == "call_function":
        name = getattr(node.target, "__name__", str(node.target))
        text = str(node.target).replace("aten.", "").replace(".default", "").replace("lasp_fx.", "lasp_fx ")
        label = text if len(text) <= 20 else name
    elif node.op in ("placeholder", "get_attr"):
        label = str(node.target)
    else:
        label = node.op
    label = label if len(label) <= 22 else label[:10] + "~" + label[-11:]
    return label, f"{node.name}: {node.op} {node.target}"


def to_svg(d: Drawing) -> str:
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{d.width:.0f}" height="{d.height:.0f}" '
           f'font-family="monospace" font-size="11">',
           f'<rect width="{d.width:.0f}" height="{d.height:.0f}" fill="white"/>']
    for a, b in d.edges:
        (x1, y1), (x2, y2) = _bottom(d.boxes[a]), _top(d.boxes[b])
        out.append(f'<line x1="{x1:.1f}" y1="{y1:.1f}" x2="{x2:.1f}" y2="{y2:.1f}" stroke="#999" '
                   'stroke-width="0.8"/>')
    for box in d.boxes.values():
        width = 3 if box.outline == NEAR_MISS else 1
        out.append(f'<g><title>{escape(box.title)}</title><rect x="{box.x:.1f}" y="{box.y:.1f}" width="{BOX_W}" '
                   f'height="{BOX_H}" rx="4" fill="{box.fill}" stroke="{box.outline}" stroke-width="{width}"/>'
                   f'<text x="{box.x + BOX_W / 2:.1f}" y="{box.y + BOX_H / 2 + 4:.1f}" '
                   f'text-anchor="middle">{escape(box.label)}</text></g>')
    for i, (colour, text) in enumerate(d.legend):
        y = MARGIN + i * LEGEND_ROW
        out.append(f'<rect x="{MARGIN}" y="{y}" width="14" height="12" fill="{colour}" stroke="#555"/>'
                   f'<text x="{MARGIN + 20}" y="{y + 10}">{escape(text)}</text>')
    out.append("</svg>")
    return "\n".join(out)


def to_png(d: Drawing, path: str, dpi: int = 100) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.patches import FancyBboxPatch

    scale = min(1.0, 30000 / max(d.width, d.height))  # keep the bitmap under 300 inches
    fig = Figure(figsize=(d.width * scale / dpi, d.height * scale / dpi), dpi=dpi)
    FigureCanvasAgg(fig)
    ax = fig.add_axes((0, 0, 1, 1))
    ax.set_xlim(0, d.width)
    ax.set_ylim(d.height, 0)
    ax.axis("off")
    for a, b in d.edges:
        (x1, y1), (x2, y2) = _bottom(d.boxes[a]), _top(d.boxes[b])
        ax.plot([x1, x2], [y1, y2], color="#999999", linewidth=0.6 * scale)
    size = 7 * scale
    for box in d.boxes.values():
        ax.add_patch(FancyBboxPatch((box.x, box.y), BOX_W, BOX_H, boxstyle="round,pad=0,rounding_size=4",
                                    facecolor=box.fill, edgecolor=box.outline,
                                    linewidth=(2.5 if box.outline == NEAR_MISS else 0.8) * scale))
        ax.text(box.x + BOX_W / 2, box.y + BOX_H / 2, box.label, ha="center", va="center", fontsize=size,
                family="monospace")
    for i, (colour, text) in enumerate(d.legend):
        y = MARGIN + i * LEGEND_ROW
        ax.add_patch(FancyBboxPatch((MARGIN, y), 14, 12, boxstyle="square,pad=0", facecolor=colour,
                                    edgecolor="#555555"))
        ax.text(MARGIN + 20, y + 6, text, va="center", fontsize=size, family="monospace")
    fig.savefig(path, dpi=dpi)


def _top(b: Box) -> tuple[float, float]:
    return b.x + BOX_W / 2, b.y


def _bottom(b: Box) -> tuple[float, float]:
    return b.x + BOX_W / 2, b.y + BOX_H
