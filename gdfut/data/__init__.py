"""gdfut.data: streaming datasets with Ray Data's names and semantics.

    import gdfut, gdfut.data as gd
    ds = gd.read_parquet("data/").map_batches(normalise).map_batches(Model, num_gpus=1,
                                                                      concurrency=2)
    for batch in ds.iter_batches(batch_size=1024): ...

Blocks are Arrow tables held as gdfut objects. Nothing runs until a consumer
(iter_batches, take, count, write_parquet...) asks; then the operators run
as a pipeline over blocks with a byte budget per operator (see planner.py).
"""
from .context import DataContext
from .dataset import Dataset, MaterializedDataset
from .errors import BatchFormatError, ColumnNotFoundError, DataError, UserCodeException
from .read_api import (from_arrow, from_items, from_numpy, from_pandas, range, read_csv,
                       read_numpy, read_parquet)
from .stats import DatasetStats

__all__ = ["Dataset", "MaterializedDataset", "DataContext", "DatasetStats", "DataError",
           "BatchFormatError", "ColumnNotFoundError", "UserCodeException", "read_parquet",
           "read_csv", "read_numpy", "range", "from_items", "from_numpy", "from_arrow",
           "from_pandas"]
