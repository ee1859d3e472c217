"""What the detector found in a graph, as a report that prints as a table."""

from __future__ import annotations

from dataclasses import dataclass, field

from lasp_fx.passes.match import LinearAttentionMatch, NearMiss


@dataclass
class InspectReport:
    """Matches (rewritten to the lasp op), near-misses (left alone, with the reason) and the softmax
    attention layers (scaled_dot_product_attention calls, left as they are)."""

    matches: list[LinearAttentionMatch] = field(default_factory=list)
    near_misses: list[NearMiss] = field(default_factory=list)
    softmax: list[NearMiss] = field(default_factory=list)

    def rows(self) -> list[tuple[str, str, str, str, str]]:
        out = [("match", m.source, m.module or "-", m.family, m.summary()) for m in self.matches]
        out += [("near-miss", n.source, n.module or "-", n.family, n.reason) for n in self.near_misses]
        out += [("softmax", n.source, n.module or "-", n.family, n.reason) for n in self.softmax]
        return out

    def __str__(self) -> str:
        head = ("", "source", "module", "family", "details")
        rows = self.rows()
        if not rows:
            return "lasp_fx.inspect: no attention found"
        widths = [max(len(r[i]) for r in rows + [head]) for i in range(4)]
        fmt = "  ".join(f"{{:<{w}}}" for w in widths) + "  {}"
        lines = [fmt.format(*head), fmt.format(*("-" * w for w in widths), "-" * 7)]
        lines += [fmt.format(*r) for r in rows]
        softmax = f", {len(self.softmax)} softmax attention layer(s) left as they are" if self.softmax else ""
        lines.append(f"{len(self.matches)} match(es), {len(self.near_misses)} near-miss(es){softmax}")
        return "\n".join(lines)

    def near_miss_lines(self, limit: int = 8) -> list[str]:
        """One line per distinct (source line, reason) of the near-misses, in graph order, with how
        many near-misses share it; past `limit` lines, one saying how many more and where to see them.
        A loop unrolled in the graph repeats one near-miss per iteration: grouped, the one that
        matters is not hidden behind copies of another."""
        groups: dict[tuple[str, str], int] = {}
        for n in self.near_misses:
            groups[(n.source, n.reason)] = groups.get((n.source, n.reason), 0) + 1
        lines = [f"attention not rewritten at {source}: {reason}" + (f" (x{count})" if count > 1 else "")
                 for (source, reason), count in groups.items()]
        if len(lines) > limit:
            lines[limit:] = [f"and {len(lines) - limit} more near-miss line(s): lasp_fx.inspect(model, *inputs) or "
                             "`lasp-fx inspect MODULE:FACTORY` lists every one"]
        return lines
