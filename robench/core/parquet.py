"""Parquet files: pyarrow imported only when one is asked for, and tables written atomically with metadata.

pyarrow is an optional dependency (the ``parquet`` extra): it is a large install that only
``FILE.parquet`` outputs need, so a missing pyarrow is bad input found before any work,
not an import error at the end of a long run.
"""

from __future__ import annotations

import json
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any

from robench.core.files import atomic_write
from robench.errors import FieldError

if TYPE_CHECKING:
    import pandas as pd

PARQUET = ".parquet"
METADATA_KEY = "robench"  # the file's key-value metadata: the run's provenance, as JSON


def pyarrow_parquet(field: str) -> ModuleType:
    """pyarrow.parquet, or a FieldError naming ``field`` (the CLI names its option) that says how to install it."""
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise FieldError(field, f'{{name}} FILE{PARQUET} needs pyarrow: pip install "robench[parquet]" '
                                "(or write FILE.csv)") from None
    return pq


def write_parquet(path: Path, frame: pd.DataFrame, categorical: tuple[str, ...] = (),
                  metadata: dict[str, Any] | None = None, field: str = "out") -> None:
    """Write ``frame`` as typed Parquet, atomically; ``metadata`` goes in as JSON under METADATA_KEY.

    ``categorical`` columns are dictionary-encoded (read back by pandas as ``category``): a
    model or attack id repeats on every row, and a typed column says so to every reader.
    """
    pq = pyarrow_parquet(field)
    import pyarrow as pa

    typed = frame.astype({c: "category" for c in categorical if c in frame.columns})
    table = pa.Table.from_pandas(typed, preserve_index=False)
    if metadata is not None:
        extra = {METADATA_KEY.encode(): json.dumps(metadata, allow_nan=False, sort_keys=True).encode()}
        table = table.replace_schema_metadata({**(table.schema.metadata or {}), **extra})
    atomic_write(path, lambda p: pq.write_table(table, p, compression="zstd"))

