"""``fedflow split``: cut one data file into per-site files and a study skeleton.

Modes (rows are assigned to sites by a ``numpy.random.default_rng(seed)``; the same file, mode
and seed give byte-identical outputs):

* ``iid``: rows shuffled and dealt into ``sites`` parts whose sizes differ by at most 1, or in
  the ratio ``sizes`` (e.g. ``2:6:12``; largest-remainder rounding).
* ``by``: every value of a column goes to exactly one site. Values are sorted, then each is given,
  largest first, to the site with the fewest rows so far (ties: the lower site number); there must
  be at least as many values as sites.
* ``dirichlet``: label skew. For each value of ``label`` (sorted) the rng draws proportions
  ``p ~ Dirichlet(alpha · 1_sites)``, shuffles that value's rows and cuts them at
  ``floor(cumsum(p) · n)``. Small ``alpha`` gives each site few labels; large ``alpha`` near-iid.

Each site's rows keep the input's order. Files keep the input's format (CSV/TSV via the csv
module with the input's delimiter, Parquet via pyarrow). A split that leaves a site with fewer
than ``min_count`` rows is refused (nothing is written).
"""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np

from fedflow.errors import StudyError

__all__ = ["SplitResult", "assign", "parse_sizes", "split_file"]

Mode = Literal["iid", "by", "dirichlet"]
_DELIMITED = {".csv": ",", ".tsv": "\t", ".tab": "\t", ".txt": ","}
_PARQUET = (".parquet", ".pq")


@dataclass(frozen=True)
class SplitResult:
    """What ``split_file`` wrote: the site files (in site order), their row counts, the study."""

    files: list[Path]
    rows: list[int]
    study: Path


def parse_sizes(text: str) -> list[float]:
    """Return the ratio ``"2:6:12"`` as ``[2.0, 6.0, 12.0]``; raise StudyError when malformed."""
    try:
        parts = [float(p) for p in text.split(":")]
    except ValueError:
        raise StudyError(
            f"--sizes {text!r}: give positive numbers separated by ':', e.g. 2:6:12"
        ) from None
    if not parts or any(not np.isfinite(p) or p <= 0 for p in parts):
        raise StudyError(f"--sizes {text!r}: every part must be a positive number")
    return parts


def _sized(n: int, weights: Sequence[float]) -> list[int]:
    """Return ``len(weights)`` counts summing to ``n`` in the ratio ``weights`` (largest remainder)."""
    w = np.asarray(weights, dtype=np.float64)
    exact = n * w / w.sum()
    counts = np.floor(exact).astype(int)
    order = np.argsort(-(exact - counts), kind="stable")
    counts[order[: n - int(counts.sum())]] += 1
    return [int(c) for c in counts]


def assign(
    n_rows: int,
    sites: int,
    *,
    seed: int,
    mode: Mode = "iid",
    values: Sequence[object] | None = None,
    alpha: float | None = None,
    sizes: Sequence[float] | None = None,
) -> list[np.ndarray]:
    """Return, per site, the sorted row indices it receives. ``values`` is the ``by`` column or
    the ``dirichlet`` label, one per row. Raises StudyError for an impossible split."""
    if sites < 1:
        raise StudyError("--sites must be at least 1")
    if sizes is not None and len(sizes) != sites:
        raise StudyError(f"--sizes gives {len(sizes)} parts for --sites {sites}")
    rng = np.random.default_rng(seed)
    if mode == "iid":
        order = rng.permutation(n_rows)
        counts = _sized(n_rows, sizes or [1.0] * sites)
        cuts = np.cumsum(counts)[:-1]
        return [np.sort(part) for part in np.split(order, cuts)]
    assert values is not None
    keys = np.asarray([str(v) for v in values], dtype=object)
    distinct = sorted(set(keys.tolist()))
    if mode == "by":
        if len(distinct) < sites:
            raise StudyError(
                f"--by: the column has {len(distinct)} value(s), fewer than --sites {sites}"
            )
        groups = {v: np.flatnonzero(keys == v) for v in distinct}
        load = [0] * sites
        chosen: list[list[np.ndarray]] = [[] for _ in range(sites)]
        for v in sorted(distinct, key=lambda v: (-len(groups[v]), v)):
            target = min(range(sites), key=lambda s: (load[s], s))
            chosen[target].append(groups[v])
            load[target] += len(groups[v])
        return [np.sort(np.concatenate(c)) if c else np.empty(0, int) for c in chosen]
    if alpha is None or not alpha > 0:
        raise StudyError("--dirichlet needs a positive ALPHA")
    parts: list[list[np.ndarray]] = [[] for _ in range(sites)]
    for v in distinct:
        rows = rng.permutation(np.flatnonzero(keys == v))
        p = rng.dirichlet([alpha] * sites)
        cuts = np.floor(np.cumsum(p)[:-1] * len(rows)).astype(int)
        for s, chunk in enumerate(np.split(rows, cuts)):
            parts[s].append(chunk)
    return [np.sort(np.concatenate(p)) for p in parts]


def split_file(
    data: Path,
    out: Path,
    *,
    sites: int,
    seed: int,
    mode: Mode = "iid",
    column: str | None = None,
    alpha: float | None = None,
    sizes: Sequence[float] | None = None,
    min_count: int = 5,
    force: bool = False,
) -> SplitResult:
    """Split ``data`` into ``out/site-<i><suffix>`` and write ``out/study.toml``; return what
    was written. ``column`` is the ``by`` column or the ``dirichlet`` label. Raises StudyError
    naming the file or option for unreadable input, a missing column, a non-empty ``out``
    (without ``force``) or a site under ``min_count``."""
    suffix = data.suffix.lower()
    if suffix not in _DELIMITED and suffix not in _PARQUET:
        raise StudyError(f"{data}: split reads .csv, .tsv or .parquet files")
    if out.exists() and any(out.iterdir()) and not force:
        raise StudyError(f"{out} is not empty (use --force to write into it)")
    if suffix in _PARQUET:
        import pyarrow.parquet as pq

        try:
            table = pq.read_table(data)
        except (OSError, ValueError) as exc:
            raise StudyError(f"{data}: cannot read it: {exc}") from None
        names = table.column_names
        n_rows = table.num_rows
        column_values = table.column(column).to_pylist() if column in names else None
    else:
        delimiter = _DELIMITED[suffix]
        try:
            text = data.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise StudyError(f"{data}: cannot read it: {exc}") from None
        rows = [r for r in csv.reader(io.StringIO(text, newline=""), delimiter=delimiter) if r]
        if not rows:
            raise StudyError(f"{data} is empty")
        names, body = rows[0], rows[1:]
        n_rows = len(body)
        column_values = [r[names.index(column)] for r in body] if column in names else None
    if mode != "iid":
        if column is None:
            raise StudyError("--by needs a COLUMN; --dirichlet needs --label COLUMN")
        if column_values is None:
            raise StudyError(f"{data}: no column '{column}' (columns: {', '.join(names)})")
    parts = assign(
        n_rows, sites, seed=seed, mode=mode, values=column_values, alpha=alpha, sizes=sizes
    )
    small = [(i + 1, len(p)) for i, p in enumerate(parts) if len(p) < min_count]
    if small:
        detail = ", ".join(f"site-{i}: {n}" for i, n in small)
        raise StudyError(
            f"the split leaves {len(small)} site(s) under min_count = {min_count} rows ({detail}); "
            "use fewer sites, other --sizes, a larger --dirichlet ALPHA or --min-count"
        )
    out.mkdir(parents=True, exist_ok=True)
    files = []
    for i, rows_at in enumerate(parts, start=1):
        target = out / f"site-{i}{suffix}"
        if suffix in _PARQUET:
            import pyarrow.parquet as pq

            pq.write_table(table.take(rows_at), target)
        else:
            buffer = io.StringIO(newline="")
            writer = csv.writer(buffer, delimiter=delimiter, lineterminator="\n")
            writer.writerow(names)
            writer.writerows(body[j] for j in rows_at)
            target.write_text(buffer.getvalue(), encoding="utf-8", newline="")
        files.append(target)
    study = out / "study.toml"
    study.write_text(_skeleton(data, files, mode, seed, column, alpha, sizes), encoding="utf-8")
    return SplitResult(files=files, rows=[len(p) for p in parts], study=study)


def _skeleton(
    data: Path,
    files: Sequence[Path],
    mode: str,
    seed: int,
    column: str | None,
    alpha: float | None,
    sizes: Sequence[float] | None,
) -> str:
    how = {
        "iid": "iid",
        "by": f"by {column}",
        "dirichlet": f"dirichlet alpha={alpha} label={column}",
    }
    lines = [
        f"# Written by `fedflow split` from {data.name} ({how[mode]}, seed {seed}"
        + (f", sizes {':'.join(f'{s:g}' for s in sizes)}" if sizes else "")
        + ").",
        f'name = "{data.stem}-split"',
        '# app = "stats"            # set the app (see `fedflow apps`), then its [params]',
        f"seed = {seed}",
        "",
    ]
    for f in files:
        lines += ["[[clients]]", f'name = "{f.stem}"', f'data = ["{f.name}"]', ""]
    return "\n".join(lines)
