"""Generic CSV/TSV/Parquet interaction tables, plus the parsing helpers the dataset loaders share."""

from __future__ import annotations

import csv
import io
import math
import re
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from fedrec.data.dataset import Dataset, Interactions
from fedrec.errors import FedrecError

Field = tuple[str, str]  # (column name, "int" | "float")

_SEP_NAMES = {"\t": "tab", ",": "comma", "|": "'|'", "::": "'::'", ";": "semicolon"}
_DUPLICATE_POLICIES = ("error", "last", "sum")


def one_line(text: object) -> str:
    """``str(text)`` with every run of whitespace (newlines included) collapsed to one space."""
    return " ".join(str(text).split())


def sep_name(sep: str) -> str:
    return _SEP_NAMES.get(sep, repr(sep))


def read_text(path: Path) -> str:
    """The text of a metadata file: UTF-8 if it decodes, else latin-1 (the older GroupLens files)."""
    if not path.is_file():
        raise FedrecError(f"{path} not found; check the dataset folder")
    data = path.read_bytes()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return data.decode("latin-1")


def _is_int(text: str) -> bool:
    try:
        int(text)
    except ValueError:
        return False
    return True


def has_header(path: Path, sep: str) -> bool:
    """True when the first non-blank line's first field is not an integer (a header line)."""
    with open(path, "rb") as handle:
        for raw in handle:
            line = raw.decode("latin-1").strip()
            if line:
                return not _is_int(line.split(sep)[0].strip())
    return False


def read_numeric_file(
    path: Path, sep: str, fields: Sequence[Field], *, skip_header: bool | str = False
) -> dict[str, np.ndarray]:
    """Read a delimited file of numeric columns with pandas; on bad input name the first bad line.

    ``skip_header`` is True, False or "auto" (skip the first line when it is not numeric).
    Blank lines are ignored. Returns one int64/float64 array per field.
    """
    if not path.is_file():
        raise FedrecError(f"{path} not found; check the dataset folder")
    if skip_header == "auto":
        skip_header = has_header(path, sep)
    dtypes = {k: ("int64" if kind == "int" else "float64") for k, (_, kind) in enumerate(fields)}
    source: Path | io.BytesIO = path
    read_sep = sep
    if len(sep) > 1:  # the C parser takes one-character separators only
        source, read_sep = io.BytesIO(path.read_bytes().replace(sep.encode(), b"\t")), "\t"
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            frame = pd.read_csv(
                source, sep=read_sep, header=None, skiprows=1 if skip_header else 0,
                dtype=dtypes, quoting=csv.QUOTE_NONE, engine="c", encoding="latin-1",
            )
    except (ValueError, OverflowError, pd.errors.ParserError) as error:
        raise diagnose_numeric_file(path, sep, fields, bool(skip_header), error) from None
    bad = frame.shape[1] != len(fields)
    if not bad:
        for k, (_, kind) in enumerate(fields):
            column = frame[k].to_numpy()
            if kind == "float" and not np.isfinite(column).all():
                bad = True
    if bad:
        raise diagnose_numeric_file(path, sep, fields, bool(skip_header), None)
    return {name: frame[k].to_numpy() for k, (name, _) in enumerate(fields)}


def diagnose_numeric_file(
    path: Path, sep: str, fields: Sequence[Field], skip_header: bool, error: Exception | None
) -> FedrecError:
    """Scan ``path`` line by line and describe its first malformed line (slow; only on failure)."""
    names = ", ".join(name for name, _ in fields)
    expected = f"{len(fields)} {sep_name(sep)}-separated fields ({names})"
    rows = 0
    with open(path, "rb") as handle:
        for lineno, raw in enumerate(handle, 1):
            if skip_header and lineno == 1:
                continue
            line = raw.decode("latin-1").rstrip("\r\n")
            if not line.strip():
                continue
            rows += 1
            parts = line.split(sep)
            if len(parts) != len(fields):
                return FedrecError(
                    f"{path}, line {lineno}: expected {expected}, found {len(parts)}; fix or delete that line"
                )
            for (name, kind), value in zip(fields, parts):
                value = value.strip()
                if kind == "int":
                    ok = _is_int(value) and abs(int(value)) < 2**63
                else:
                    try:
                        ok = math.isfinite(float(value))
                    except ValueError:
                        ok = False
                if not ok:
                    what = "an integer" if kind == "int" else "a finite number"
                    return FedrecError(
                        f"{path}, line {lineno}: {name} {value!r} is not {what}; fix or delete that line"
                    )
    if rows == 0:
        return FedrecError(f"{path} has no data rows; expected lines of {expected}")
    detail = f" ({one_line(error)})" if error is not None else ""
    return FedrecError(f"could not parse {path}{detail}; expected lines of {expected}")


def line_of_row(path: Path, row: int, skip_header: bool = False) -> int:
    """The 1-based line number of data row ``row`` (0-based, blank lines not counted) in ``path``."""
    seen = -1
    with open(path, "rb") as handle:
        for lineno, raw in enumerate(handle, 1):
            if (skip_header and lineno == 1) or not raw.strip():
                continue
            seen += 1
            if seen == row:
                return lineno
    return -1


def index_ids(raw: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Sorted unique ids and the contiguous index of every entry of ``raw``.

    Integer arrays sort numerically. String ids sort numerically when all are integers
    (ties such as "01"/"1" by text), otherwise lexicographically.
    """
    unique, inverse = np.unique(raw, return_inverse=True)
    if unique.dtype.kind in "US" and len(unique):
        try:
            numeric = unique.astype(np.int64)
        except (ValueError, OverflowError):
            numeric = None
        if numeric is not None:
            order = np.lexsort((unique, numeric))
            rank = np.empty(len(order), dtype=np.int64)
            rank[order] = np.arange(len(order))
            unique, inverse = unique[order], rank[inverse]
    return unique, inverse.astype(np.int64).reshape(-1)


def ids_as_str(ids: np.ndarray) -> np.ndarray:
    """Raw ids as a compact numpy str array."""
    return np.asarray([str(v) for v in ids.tolist()], dtype=str) if len(ids) else np.zeros(0, dtype=str)


def first_duplicate(users: np.ndarray, items: np.ndarray, num_items: int) -> tuple[int, int, int] | None:
    """(count, first row, repeated row) of duplicate (user, item) pairs, or None when there are none.

    ``count`` is the number of rows that repeat an earlier row's pair.
    """
    key = users.astype(np.int64) * max(num_items, 1) + items
    order = np.argsort(key, kind="stable")
    same = key[order][1:] == key[order][:-1]
    count = int(same.sum())
    if count == 0:
        return None
    repeats = np.sort(order[1:][same])
    later = int(repeats[0])
    first = int(order[np.searchsorted(key[order], key[later])])
    return count, first, later


# --------------------------------------------------------------------------- load_table


def _infer_sep(path: Path) -> str:
    suffix = path.suffix.lower()
    if suffix == ".csv":
        return ","
    if suffix in (".tsv", ".tab"):
        return "\t"
    with open(path, "rb") as handle:
        sample = handle.read(8192).decode("latin-1")
    try:
        return csv.Sniffer().sniff(sample, delimiters=",\t;|").delimiter
    except csv.Error:
        raise FedrecError(
            f"cannot tell the column separator of {path} from its extension; pass sep (e.g. data.sep=',')"
        ) from None


def _read_delimited(path: Path, sep: str, wanted: list[str]) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Columns ``wanted`` as str arrays, and the line number of each row (header on line 1)."""
    frame = None
    for encoding in ("utf-8-sig", "latin-1"):  # utf-8-sig drops a byte-order mark
        try:
            frame = pd.read_csv(
                path, sep=sep, header=None, dtype=str, keep_default_na=False,
                skip_blank_lines=False, encoding=encoding, engine="c" if len(sep) == 1 else "python",
            )
            break
        except UnicodeDecodeError:
            continue
        except pd.errors.EmptyDataError:
            raise FedrecError(f"{path} is empty; expected a header line and one row per interaction") from None
        except (ValueError, pd.errors.ParserError) as error:
            match = re.search(r"Expected (\d+) fields in line (\d+), saw (\d+)", str(error))
            if match:
                raise FedrecError(
                    f"{path}, line {match.group(2)}: expected {match.group(1)} {sep_name(sep)}-separated fields "
                    f"like the header, found {match.group(3)}; fix that line (quote fields containing the separator)"
                ) from None
            raise FedrecError(f"could not parse {path}: {one_line(error)}; check the file format and sep") from None
    assert frame is not None
    header = [str(h).strip() for h in frame.iloc[0].tolist()]
    _check_columns(path, header, wanted)
    body = frame.iloc[1:]
    lines = np.arange(2, len(frame) + 1)
    columns = {name: body[header.index(name)].to_numpy(dtype=object).astype(str) for name in wanted}
    blank = np.all(body.to_numpy(dtype=object).astype(str) == "", axis=1) if len(body) else np.zeros(0, bool)
    return {name: values[~blank] for name, values in columns.items()}, lines[~blank]


def _read_parquet(path: Path, wanted: list[str]) -> tuple[dict[str, np.ndarray], np.ndarray]:
    import pyarrow.parquet as pq

    try:
        names = pq.read_schema(path).names
        _check_columns(path, names, wanted)
        table = pq.read_table(path, columns=wanted).to_pandas()
    except FedrecError:
        raise
    except Exception as error:  # pyarrow raises many types for corrupt files
        raise FedrecError(f"could not read Parquet file {path}: {one_line(error)}; check that it is Parquet") from None
    columns = {}
    for name in wanted:
        series = table[name]
        text = series.astype(object).where(series.notna(), "").to_numpy(dtype=object).astype(str)
        columns[name] = text
    return columns, np.arange(1, len(table) + 1)


def _check_columns(path: Path, available: Sequence[str], wanted: list[str]) -> None:
    for name in wanted:
        if name not in available:
            listed = ", ".join(repr(a) for a in available)
            raise FedrecError(f"column {name!r} not found in {path}; available columns: {listed}")


def _numeric(
    path: Path, values: np.ndarray, lines: np.ndarray, where: str, column: str, hint: str
) -> np.ndarray:
    parsed = pd.to_numeric(pd.Series(values, dtype=object).str.strip(), errors="coerce").to_numpy(dtype=np.float64)
    bad = ~np.isfinite(parsed)
    if bad.any():
        k = int(np.argmax(bad))
        raise FedrecError(f"{path}, {where} {lines[k]}: {column} {str(values[k])!r} is not a number; {hint}")
    return parsed


def load_table(
    path: Path,
    user_col: str,
    item_col: str,
    rating_col: str | None = None,
    timestamp_col: str | None = None,
    sep: str | None = None,
    title_col: str | None = None,
    text_cols: list[str] | None = None,
    duplicates: str = "error",
    rating_range: tuple[float, float] | None = None,
    name: str | None = None,
) -> Dataset:
    """Load interactions from a CSV/TSV (header line required) or Parquet file.

    Without ``rating_col`` every interaction has weight 1.0. ``rating_range`` marks the ratings
    as explicit (and checks them); without it the rating column is an implicit weight.
    ``duplicates`` says what to do with repeated (user, item) rows: "error", "last" (keep the
    latest by timestamp, then by row order) or "sum" (add the weights, keep the latest timestamp).
    Ids sort numerically when they are all integers, otherwise as text.
    """
    path = Path(path).expanduser()
    if duplicates not in _DUPLICATE_POLICIES:
        raise FedrecError(f"data.duplicates={duplicates!r} is not valid; use one of: error, last, sum")
    if rating_range is not None:
        lo, hi = (float(v) for v in rating_range)
        if not lo < hi:
            raise FedrecError(f"rating_range {rating_range} is empty; give (min, max) with min < max")
        if rating_col is None:
            raise FedrecError("rating_range is set but rating_col is not; name the rating column or drop the range")
        if duplicates == "sum":
            raise FedrecError("data.duplicates=sum adds weights, which makes no sense for explicit ratings; use last")
    if not path.is_file():
        raise FedrecError(f"{path} not found; pass the path of a CSV, TSV or Parquet file")
    wanted: list[str] = []
    for column in [user_col, item_col, rating_col, timestamp_col, title_col, *(text_cols or [])]:
        if column and column not in wanted:
            wanted.append(column)
    if path.suffix.lower() in (".parquet", ".pq"):
        columns, lines = _read_parquet(path, wanted)
        where = "row"
    else:
        columns, lines = _read_delimited(path, sep or _infer_sep(path), wanted)
        where = "line"
    if len(lines) == 0:
        raise FedrecError(f"{path} has no data rows; expected one row per interaction after the header")

    raw_users = np.char.strip(columns[user_col])
    raw_items = np.char.strip(columns[item_col])
    for column, values in ((user_col, raw_users), (item_col, raw_items)):
        empty = values == ""
        if empty.any():
            k = int(np.argmax(empty))
            raise FedrecError(
                f"{path}, {where} {lines[k]}: {column!r} is empty (or the row is truncated); "
                "every row needs a user and an item"
            )
    if rating_col is not None:
        ratings = _numeric(path, columns[rating_col], lines, where, rating_col, "fix or delete that row")
    else:
        ratings = np.ones(len(lines))
    if rating_range is not None:
        outside = (ratings < rating_range[0]) | (ratings > rating_range[1])
        if outside.any():
            k = int(np.argmax(outside))
            raise FedrecError(
                f"{path}, {where} {lines[k]}: rating {ratings[k]:g} is outside rating_range "
                f"[{rating_range[0]:g}, {rating_range[1]:g}]; fix the row or the range"
            )
    if timestamp_col is not None:
        hint = "timestamps must be unix seconds; convert them or drop timestamp_col"
        stamps = np.floor(_numeric(path, columns[timestamp_col], lines, where, timestamp_col, hint)).astype(np.int64)
    else:
        stamps = np.zeros(len(lines), dtype=np.int64)

    user_ids, users = index_ids(raw_users)
    item_ids, items = index_ids(raw_items)
    rows = np.arange(len(lines))
    duplicate = first_duplicate(users, items, len(item_ids))
    if duplicate is not None:
        if duplicates == "error":
            count, first, later = duplicate
            raise FedrecError(
                f"{count} duplicate (user, item) rows in {path}, e.g. user {raw_users[later]} item "
                f"{raw_items[later]} ({where}s {lines[first]} and {lines[later]}); "
                "remove them or set data.duplicates=last|sum"
            )
        key = users * len(item_ids) + items
        order = np.lexsort((rows, stamps, key))  # within a pair: by time, then by row
        sorted_key = key[order]
        last_of_group = np.r_[sorted_key[1:] != sorted_key[:-1], True]
        keep = order[last_of_group]
        if duplicates == "sum":
            starts = np.flatnonzero(np.r_[True, sorted_key[1:] != sorted_key[:-1]])
            summed = np.add.reduceat(ratings[order], starts)
            ratings = ratings.copy()
            ratings[keep] = summed
        rows = np.sort(keep)

    interactions = Interactions(
        users[rows], items[rows], ratings[rows].astype(np.float32), stamps[rows].astype(np.int64)
    )
    titles, texts = _item_metadata(columns, items, rows, len(item_ids), title_col, text_cols or [])
    return Dataset(
        name=name or path.stem,
        interactions=interactions,
        user_ids=user_ids.astype(str),
        item_ids=item_ids.astype(str),
        item_titles=titles,
        item_texts=texts,
        rating_range=None if rating_range is None else (float(rating_range[0]), float(rating_range[1])),
    )


def _item_metadata(
    columns: dict[str, np.ndarray],
    items: np.ndarray,
    rows: np.ndarray,
    num_items: int,
    title_col: str | None,
    text_cols: list[str],
) -> tuple[list[str], list[str]]:
    """Title and text of each item, from the last kept row that mentions it."""
    last_row = np.zeros(num_items, dtype=np.int64)
    last_row[items[rows]] = rows  # rows are increasing, so the last assignment wins
    titles = [""] * num_items
    if title_col is not None:
        titles = [str(v).strip() for v in columns[title_col][last_row]]
    texts = list(titles)
    for column in text_cols:
        values = columns[column][last_row]
        for i, value in enumerate(values):
            value = str(value).strip()
            if value:
                texts[i] = f"{texts[i]}. {column}: {value}" if texts[i] else f"{column}: {value}"
    return titles, texts
