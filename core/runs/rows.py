"""Dense per-model list columns: a [models x examples] array as one list per row, and back."""
from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc


def _pack_rows(matrix: Any, dtype: type, pa_type: pa.DataType) -> pa.Array:
    """[K, N] array -> list array of K rows of N values."""
    try:
        values = np.asarray(matrix, dtype=dtype)
    except ValueError as err:
        raise ValueError(f"rows must all have the same length: {err}") from err
    if values.ndim != 2:
        raise ValueError(f"expected a 2-d [models, examples] array, got shape {values.shape}")
    k, n = values.shape
    offsets = np.arange(k + 1, dtype=np.int64) * n
    flat = pa.array(values.ravel(), type=pa_type)
    if k * n < 2**31:
        return pa.ListArray.from_arrays(pa.array(offsets.astype(np.int32)), flat)
    return pa.LargeListArray.from_arrays(pa.array(offsets), flat)


def _unpack_rows(column: Any, dtype: type) -> np.ndarray:
    """List column of equal-length rows -> [K, N] array."""
    if isinstance(column, pd.Series):
        column = pa.array(column.tolist())  # pandas holds list cells as numpy arrays
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks()
    if len(column) == 0:
        return np.empty((0, 0), dtype=dtype)
    if column.null_count:
        raise ValueError("list column has null rows")
    k = len(column)
    lengths = pc.list_value_length(column).to_numpy()
    n = int(lengths[0]) if k else 0
    if (lengths != n).any():
        raise ValueError(f"rows have different lengths ({lengths.min()}..{lengths.max()})")
    flat = column.flatten().to_numpy(zero_copy_only=False)
    return flat.astype(dtype, copy=False).reshape(k, n)


def pack_bool_rows(matrix: np.ndarray) -> pa.Array:
    """[K, N] bools -> `list<bool>` column, one list of N per model row."""
    return _pack_rows(matrix, np.bool_, pa.bool_())


def unpack_bool_rows(column: pa.Array | pa.ChunkedArray | pd.Series) -> np.ndarray:
    """`list<bool>` column of equal-length rows -> [K, N] bool array."""
    return _unpack_rows(column, np.bool_)


def pack_float_rows(matrix: np.ndarray) -> pa.Array:
    """[K, N] floats -> `list<float32>` column, one list of N per model row."""
    return _pack_rows(matrix, np.float32, pa.float32())


def pack_half_rows(matrix: np.ndarray) -> pa.Array:
    """[K, N] floats -> `list<halffloat>` column: per-model, per-example scores of ~3 significant digits at 2 bytes
    (probabilities and margins, which only ever reach tables averaged over many models)."""
    return _pack_rows(matrix, np.float16, pa.float16())


def unpack_float_rows(column: pa.Array | pa.ChunkedArray | pd.Series) -> np.ndarray:
    """`list<float32>` (or `list<halffloat>`) column of equal-length rows -> [K, N] float32 array."""
    return _unpack_rows(column, np.float32)
