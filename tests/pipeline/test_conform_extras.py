"""The manifest's extra columns keep the first run's names and types (write.conform_extras)."""
import pyarrow as pa
import pytest

from humanseg_batch.pipeline.write import conform_extras, extras_columns


def test_new_columns_are_left_out_missing_ones_are_null_types_are_cast_or_refused():
    first = pa.table({"site": pa.array([1, 2], pa.int64()), "note": pa.nulls(2)})
    fixed = extras_columns(first)
    assert fixed == [{"name": "site", "type": "int64"}, {"name": "note", "type": "string"}]
    later = pa.table({"site": pa.array([3], pa.int32()), "camera": ["c"]})
    table, new = conform_extras(later, fixed)
    assert new == ["camera"]
    assert table.schema == pa.schema([("site", pa.int64()), ("note", pa.string())])
    assert table.to_pylist() == [{"site": 3, "note": None}]
    with pytest.raises(ValueError, match="manifest column 'site' was int64"):
        conform_extras(pa.table({"site": ["north"]}), fixed)
    assert conform_extras(pa.table({"x": [1]}), [])[0].num_columns == 0
