"""The one evaluator: reads each target of targets.TARGETS off what the stage's parts measured."""
import operator

from .config import HEADLINE
from .parse import find_row, matches, number
from .targets import TARGETS

COMPARE = {">=": operator.ge, "<=": operator.le, "==": operator.eq}


def evaluate(c):
    """Appends to c.targets each target of c.stage whose source part ran: its id, wording, measured
    value, threshold, whether it is met (None: not measured) and source."""
    sizes = HEADLINE[c.mode]
    for t in TARGETS:
        data = c.data.get(t.source)
        if t.stage != c.stage or not data or (t.when == "rows" and not data["rows"]):
            continue
        for names, value, shown in MEASURES[t.measure](c, t, data, sizes):
            met = None if value is None else COMPARE[t.compare](value, t.threshold)
            c.targets.append(dict(id=t.id.format(**names), target=t.text.format(**names), value=shown,
                                  wanted=t.wanted, met=met, source=t.source))


# Each measure returns a list of (placeholder values, the value compared with the threshold, the
# value shown) for target `t` read off its source's data.
def cell(c, t, data, sizes):
    if t.each:
        return cell_per_value(t, data, sizes)
    value = table_cell(data["rows"], filled(t.rows, sizes), t.column)
    return [(sizes, value, value)]


def cell_per_value(t, data, sizes):
    """One reading per value of column `t.each`, at that value's largest N."""
    ours = [r for r in data["rows"] if matches(r, t.rows)]
    readings = []
    for v in sorted({r[t.each] for r in ours}, key=int):
        widest = max((r for r in ours if r[t.each] == v), key=lambda r: int(r["N"].split("^")[-1]))
        value = number(widest.get(t.column))
        readings.append((dict(sizes, **{t.each: v, "N": widest["N"]}), value, value))
    return readings


def ratio(c, t, data, sizes):
    want = filled(t.rows, sizes)
    a = table_cell(data["rows"], want, t.column)
    b = table_cell(data["rows"], dict(want, **t.over), t.column)
    r = None if a is None or b is None or b == 0 else a / b
    return [(sizes, r, None if r is None else round(r, 2))]


def field(c, t, data, sizes):
    return [(sizes, data.get(t.column), data.get(t.column))]


def count(c, t, data, sizes):
    n = len(data[t.column])
    return [(sizes, n, n)]


def sanitizer(c, t, data, sizes):
    n = data[t.column] if data[t.column] is not None else data.get("errors")
    return [(sizes, n, n)]


def tests(c, t, data, sizes):
    failed = data["failures"] + data["errors"]
    not_passing = failed + (0 if c.dry else data["gpu_skips"]) + int(data["tests"] == 0)
    return [(sizes, not_passing, f"{data['passed']} passed, {failed} failed, {data['gpu_skips']} GPU skips")]


def epochs_left(c, t, data, sizes):
    done, planned = data["epochs_done"], data["epochs_planned"]
    return [(sizes, planned - done, f"{done} of {planned} epochs")]


MEASURES = dict(cell=cell, ratio=ratio, field=field, count=count, sanitizer=sanitizer, tests=tests,
                epochs_left=epochs_left)


def filled(rows, sizes):
    """The row filter with the headline sizes in its {placeholders}."""
    return {k: v.format(**sizes) for k, v in rows.items()}


def table_cell(rows, want, column):
    row = find_row(rows, **want)
    return number(row.get(column)) if row else None
